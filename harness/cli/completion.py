"""``rho completion``: a shell completion script for ``rho``, built from its argparse parsers (shtab)."""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")

INSTALL = """install:
  bash: rho completion bash > ~/.local/share/bash-completion/completions/rho
  zsh:  rho completion zsh > "${fpath[1]}/_rho"   (a folder on $fpath; then: compinit)
or, for this shell only: eval "$(rho completion bash)"
"""


def _completion(args: argparse.Namespace) -> int:
    import shtab

    from harness.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho completion bash|zsh``."""
    completion = commands.add_parser(
        "completion",
        help="print a bash or zsh completion script for rho",
        description="Print a completion script for SHELL: commands, actions and options of rho, "
        "generated from its command-line parsers (so it never lags behind them).",
        epilog=INSTALL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell the script is for")
    completion.set_defaults(func=_completion)
