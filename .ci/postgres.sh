#!/usr/bin/env bash
# Start a private PostgreSQL server for the tests that need one; prints the URL to export.
# Installs Debian's postgresql package when it is missing. Usage: eval "$(.ci/postgres.sh start)";
# .ci/postgres.sh stop DATADIR.
set -euo pipefail
case "${1:-start}" in
  start)
    if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
    fi
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    data=$(mktemp -d /tmp/rho-pg.XXXXXX)
    chown postgres "$data"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    runuser -u postgres -- "$bin/initdb" -D "$data/db" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    runuser -u postgres -- "$bin/pg_ctl" -D "$data/db" -l "$data/log" -w \
      -o "-p $port -k $data -c listen_addresses=127.0.0.1" start >&2
    runuser -u postgres -- psql -h "$data" -p "$port" -U postgres -q \
      -c "ALTER USER postgres PASSWORD 'rho-ci-secret'" -c "CREATE DATABASE rho_test" >&2
    echo "export RHO_TEST_POSTGRES_URL=postgresql+psycopg2://postgres:rho-ci-secret@127.0.0.1:$port/rho_test"
    echo "export RHO_TEST_POSTGRES_DATA=$data"
    ;;
  stop)
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    runuser -u postgres -- "$bin/pg_ctl" -D "$2/db" -m fast -w stop >&2 || true
    rm -rf "$2"
    ;;
esac
