"""Back-end of scripts/0X_*.py: the original code's script names as thin wrappers over the `stsae` CLI.

Users of the original layout find the script they expect; each forwards its arguments (`--config`,
`--run-dir`, `--set`, `--force`, …) to the matching stage command(s), so there is one implementation.
"""

from __future__ import annotations

import sys

import typer

from stsae.cli import app


def forward(stages: list[str], doc: str, argv: list[str] | None = None) -> int:
    """Run `stsae <stage> ARGS` for each stage in order; `--help` prints `doc` and the stage help."""
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        typer.echo(f"{doc.strip()}\n\nEquivalent to: " + " then ".join(f"`stsae {s} ARGS`" for s in stages) + "\n")
        return _invoke([stages[-1], "--help"])
    for stage in stages:
        code = _invoke([stage, *args])
        if code:
            return code
    return 0


def _invoke(args: list[str]) -> int:
    """Run one CLI command in-process; typer ends every command with SystemExit carrying its code."""
    try:
        app(args, prog_name="stsae")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0
