"""``python -m harness`` is the ``rho`` command (and what torchrun launches)."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
