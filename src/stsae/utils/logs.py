"""Logging setup: rich console output plus a plain log file in the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.logging import RichHandler


def setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    """verbosity: -1 quiet (warnings), 0 info, 1+ debug. Idempotent: replaces earlier handlers."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger = logging.getLogger("stsae")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    console.setLevel(level)
    logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        logger.addHandler(file_handler)
    logger.propagate = False
