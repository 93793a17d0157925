"""Peak resident memory of the current process, as the benchmarks report it."""

from __future__ import annotations

from pathlib import Path


def own_peak_rss_mib() -> float:
    """This process's peak RSS in MiB (VmHWM of /proc/self/status).

    Not `resource.getrusage(...).ru_maxrss`: Linux carries the forking parent's peak across exec into
    the child's ru_maxrss, so a benchmark child would report its parent's size whenever the parent
    was larger (e.g. after writing fixtures or compiling a model), hiding the child's own footprint.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM line in /proc/self/status (not Linux?)")
