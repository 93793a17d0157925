"""Kill anywhere, rerun, same result: `stsae run` SIGKILLed inside extract, train (mid-model, from a
training checkpoint), evaluate and figures, then rerun to completion, ends with the same files as a run
that was never interrupted (windows, embeddings, checkpoints and leaderboard byte for byte).

Kill points are seeded: each waits for a file that proves the target stage is under way, then a delay
drawn from a seeded generator, then SIGKILL. After each kill the target stage must not be marked
complete (otherwise the kill missed its stage and the test would prove nothing).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from stsae.utils.io import TEMP_MARK
from stsae.utils.seeding import rng
from test_determinism import REPO, TINY, key_files, run_differences, stsae


@dataclass(frozen=True)
class KillPoint:
    """Kill once `started(run_dir)` holds (the stage is under way), after up to `max_delay_s` more."""

    stage_dir: str
    started: Callable[[Path], bool]
    max_delay_s: float


def _any(pattern: str) -> Callable[[Path], bool]:
    return lambda root: any(root.glob(pattern))


KILL_POINTS = (
    KillPoint("embeddings", _any("embeddings/.extract-progress-*.json"), 0.2),
    KillPoint("models", _any("models/checkpoints/*.safetensors"), 0.1),
    KillPoint("eval", _any("models/baselines/stage.json"), 0.5),
    KillPoint("figures", _any("figures/*.png"), 0.5),
)


def _run_and_kill(run_dir: Path, point: KillPoint, delay_s: float) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "stsae", "run", "-q", "--config", str(TINY),
                             "--run-dir", str(run_dir)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not point.started(run_dir):
            assert proc.poll() is None, f"run ended ({proc.returncode}) before reaching {point.stage_dir}"
            assert time.monotonic() < deadline, f"{point.stage_dir} never started"
            time.sleep(0.01)
        time.sleep(delay_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run_dir / point.stage_dir / "stage.json").exists(), (
        f"the kill landed after {point.stage_dir} finished; the kill point proves nothing")


@pytest.mark.slow
def test_run_killed_in_every_stage_then_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    result = stsae("run", reference)
    assert result.returncode == 0, result.stderr
    delays = rng(0, "resume-kill-test").uniform(0.0, 1.0, len(KILL_POINTS))
    for point, fraction in zip(KILL_POINTS, delays, strict=True):
        _run_and_kill(killed, point, fraction * point.max_delay_s)
    result = stsae("run", killed)
    assert result.returncode == 0, result.stderr
    assert key_files(killed) == key_files(reference)
    assert run_differences(reference, killed) == []
    assert not [p for p in killed.rglob("*") if TEMP_MARK in p.name or p.name.endswith(".partial")]
    assert not (killed / "models" / "checkpoints").exists()
