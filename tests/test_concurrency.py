"""Two `stsae` processes never write one run directory at once: the second refuses (exit 2, naming the
holder). The lock is a kernel flock, so a holder that died never blocks a run and two newcomers never
both enter; a lock naming another host is broken only with --break-lock."""

from __future__ import annotations

import fcntl
import itertools
import json
import multiprocessing
import multiprocessing.synchronize
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
from stsae.pipeline.lock import RunLockedError, run_lock
from stsae.rundir import RunDir

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
REPO = TINY.parents[2]


def _stsae(*args: str) -> list[str]:
    return [sys.executable, "-m", "stsae", *args, "--config", str(TINY)]


def _wait_for_holder(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    """Until the lock file names its holder (it may exist, empty, before the holder takes the lock)."""
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, f"first run exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_on_a_locked_directory_refuses_with_exit_code_2(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    first = subprocess.Popen(_stsae("run", "--run-dir", str(run_dir.root)), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_holder(run_dir.lock, first)
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


def _holder_text(pid: int, host: str) -> str:
    return json.dumps({"pid": pid, "host": host})


def _prepare(run_dir: RunDir, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["prepare", "--config", str(TINY), "--run-dir", str(run_dir.root), *extra])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.strip().splitlines()[-1]


def test_lock_held_by_a_live_process_refuses_the_second_run(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    with run_lock(run_dir.lock):
        held = run_dir.lock.read_text()
        code, line = _prepare(run_dir)
        assert run_dir.lock.read_text() == held
    assert (code, line) == (2, f"error: {run_dir.root}: run directory is in use by process {os.getpid()} "
                               f"(lock {run_dir.lock}); wait for it to finish or choose another --run-dir")
    assert not run_dir.windows.exists()


def test_empty_lock_of_a_live_process_is_not_mistaken_for_stale(tmp_path: Path) -> None:
    lock = tmp_path / ".stsae.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # taken, holder not written yet
        with pytest.raises(RunLockedError, match="in use by another process"), run_lock(lock):
            pass
        assert lock.read_text() == ""
    finally:
        os.close(fd)


def test_lock_naming_a_dead_process_of_this_host_is_taken_without_guessing(tmp_path: Path, caplog) -> None:
    lock = tmp_path / ".stsae.lock"
    dead = _dead_pid()
    lock.write_text(_holder_text(dead, socket.gethostname()))
    with caplog.at_level("INFO", logger="stsae.pipeline.lock"), run_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"its last holder, process {dead}, has exited" in caplog.text
    assert lock.read_text() == ""  # released: the holder is erased, the file (the kernel lock's inode) stays


def test_lock_of_another_host_is_kept_without_break_lock(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.lock.write_text(_holder_text(4242, "elsewhere.example"))
    code, line = _prepare(run_dir)
    assert (code, line) == (2, f"error: {run_dir.root}: run directory was locked by process 4242 on host "
                               f"elsewhere.example (lock {run_dir.lock}), which this host cannot check; if that "
                               "run has ended, rerun with --break-lock")
    assert run_dir.lock.read_text() == _holder_text(4242, "elsewhere.example")
    assert sorted(p.name for p in run_dir.root.iterdir()) == [".stsae.lock", "run.log"]


def test_break_lock_takes_another_hosts_lock(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.lock.write_text(_holder_text(4242, "elsewhere.example"))
    result = CliRunner().invoke(app, ["report", "--config", str(TINY), "--run-dir", str(run_dir.root),
                                      "--break-lock"])
    assert result.exit_code == 2  # past the lock, the report stage finds no upstream outputs
    assert result.output.strip().splitlines()[-1].endswith("missing or not a JSON object (run `stsae run` first)")
    assert "--break-lock: taking lock" in run_dir.log.read_text()
    assert run_dir.lock.read_text() == ""


def _hold(lock: Path, entered: multiprocessing.synchronize.Event) -> None:
    with run_lock(lock):
        entered.set()
        time.sleep(60)


def test_lock_of_a_killed_holder_is_released_by_the_kernel(tmp_path: Path) -> None:
    lock = tmp_path / ".stsae.lock"
    context = multiprocessing.get_context("fork")
    entered = context.Event()
    holder = context.Process(target=_hold, args=(lock, entered))
    holder.start()
    try:
        assert entered.wait(30)
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"), run_lock(lock):
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with run_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def _contend(lock: Path, start: multiprocessing.synchronize.Barrier, record: Path) -> None:
    start.wait()
    try:
        with run_lock(lock):
            entered = time.monotonic()
            time.sleep(0.3)
            left = time.monotonic()
    except RunLockedError:
        return
    with open(record, "a") as handle:
        handle.write(f"{entered} {left}\n")


def test_contenders_for_a_stale_lock_never_hold_it_together(tmp_path: Path) -> None:
    lock, record = tmp_path / ".stsae.lock", tmp_path / "entries.txt"
    lock.write_text(_holder_text(_dead_pid(), socket.gethostname()))
    context = multiprocessing.get_context("fork")
    start = context.Barrier(6)
    workers = [context.Process(target=_contend, args=(lock, start, record)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert [worker.exitcode for worker in workers] == [0] * 6
    spans = sorted(tuple(map(float, line.split())) for line in record.read_text().splitlines())
    assert spans, "nobody took the stale lock"
    assert all(left <= next_entered for (_, left), (next_entered, _) in itertools.pairwise(spans))
