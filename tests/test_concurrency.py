"""Two `stsae` processes never write one run directory at once: the second refuses (exit 2, naming the
holder), and a lock left by a process that died is detected and cleared."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stsae.cli import app
from stsae.pipeline.rundir import RunDir

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
REPO = TINY.parents[2]


def _stsae(*args: str) -> list[str]:
    return [sys.executable, "-m", "stsae", *args, "--config", str(TINY)]


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"first run exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_on_a_locked_directory_refuses_with_exit_code_2(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    first = subprocess.Popen(_stsae("run", "--run-dir", str(run_dir.root)), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(run_dir.lock, first)
        second = subprocess.run(_stsae("prepare", "--run-dir", str(run_dir.root)), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run must still hold the lock for this test to mean anything"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir.root}: run directory is in use by process {first.pid} (lock {run_dir.lock}); "
        "wait for it to finish or choose another --run-dir")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_stale_lock_of_a_dead_process_is_cleared_and_the_run_proceeds(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    dead = _dead_pid()
    run_dir.lock.write_text(f"{dead}\n{socket.gethostname()}")
    result = subprocess.run(_stsae("prepare", "--run-dir", str(run_dir.root)), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"clearing stale lock {run_dir.lock} left by a process that is gone (({dead}, " in (
        run_dir.log.read_text())
    assert not run_dir.lock.exists()
    assert run_dir.windows.is_file()


def test_lock_held_by_this_live_process_is_not_mistaken_for_stale(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.lock.write_text(f"{os.getpid()}\n{socket.gethostname()}")
    result = CliRunner().invoke(app, ["prepare", "--config", str(TINY), "--run-dir", str(run_dir.root)])
    assert result.exit_code == 2
    assert f"run directory is in use by process {os.getpid()}" in result.output
    assert run_dir.lock.read_text() == f"{os.getpid()}\n{socket.gethostname()}"
    assert not run_dir.windows.exists()
