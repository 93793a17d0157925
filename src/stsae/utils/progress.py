"""Progress bars for long loops, silenced when logging is quieter than INFO (`-q`)."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


def progress(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr; disabled under `-q` so logs stay clean in batch jobs."""
    quiet = logging.getLogger("stsae").getEffectiveLevel() > logging.INFO
    return tqdm(
        total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, mininterval=1.0,
        dynamic_ncols=True, leave=False,
    )
