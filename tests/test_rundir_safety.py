"""The run directory is ours alone: stsae refuses, in one line, to write where it would touch files that
are not its own (a user's files, symlink targets outside the run, a figure outside figures/), and every
refusal leaves what was there byte-identical."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from run_fixture import write_fake_run
from stsae.cli import app
from stsae.pipeline import lock as lock_module
from stsae.pipeline.safety import environment_error_message
from stsae.report.figures import FigureInfo, write_figure_index
from stsae.report.html import write_report
from stsae.rundir import RunDir
from stsae.utils import io

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"


def snapshot(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, bytes | str]:
    """Every file under root (symlinks not followed: a link maps to its target text) -> its bytes."""
    files: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if key not in skip:
                files[key] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return files


def stsae(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(TINY)])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output.strip().splitlines()[-1]


def reached_the_stage(line: str) -> bool:
    """The run got past every run-directory check and failed only on the stage's missing inputs."""
    return re.fullmatch(r"error: .*missing.*\(run `stsae \w+` first\)", line) is not None


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def ours(root: Path) -> RunDir:
    """A run directory stsae made earlier (it has a manifest)."""
    run_dir = RunDir(root)
    io.write_json(run_dir.manifest, {"run_name": "earlier"})
    return run_dir


# --- the temp-file sweep ----------------------------------------------------------------------------


def test_sweep_leaves_user_files_named_like_temp_files(tmp_path: Path) -> None:
    run_dir = ours(tmp_path / "run")
    pid = dead_pid()
    for name in (f"notes.tmp-{pid}", f"project/sub/draft.tmp-{pid}", f"windows/notes.tmp-{pid}"):
        (run_dir.root / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir.root / name).write_text("user data")
    before = snapshot(run_dir.root)
    code, line = stsae("report", "--run-dir", str(run_dir.root))
    assert code == 2 and reached_the_stage(line)
    after = snapshot(run_dir.root, skip=frozenset({"run.log", ".stsae.lock"}))
    assert after == before


def test_sweep_removes_only_this_hosts_orphans_inside_stage_folders(tmp_path: Path) -> None:
    pid, tag = dead_pid(), io.host_tag()
    orphans = [tmp_path / f"manifest.json.stsae-tmp-{tag}-{pid}",
               tmp_path / "models" / "checkpoints" / f"m.safetensors.stsae-tmp-{tag}-{pid}"]
    kept = [tmp_path / "models" / f"n.safetensors.stsae-tmp-{tag}-{os.getpid()}",  # a live writer
            tmp_path / "models" / f"o.safetensors.stsae-tmp-{'0' * 8}-{pid}",  # another host's writer
            tmp_path / "project" / f"x.stsae-tmp-{tag}-{pid}"]  # not a stage folder
    for path in orphans + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert sorted(lock_module.remove_orphaned_temp_files(tmp_path)) == sorted(orphans)
    assert all(path.exists() for path in kept)


def test_temp_names_are_recognised_only_when_made_by_this_host(tmp_path: Path) -> None:
    name = io.temp_path(tmp_path / "z.npy").name
    assert io.temp_writer_pid(name) == os.getpid()
    assert io.temp_writer_pid(f"z.npy.tmp-{os.getpid()}") is None
    assert io.temp_writer_pid(name.replace(io.host_tag(), "0" * 8)) is None


# --- whose directory is it -------------------------------------------------------------------------


def test_non_empty_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "sub" / "draft.tmp-1").write_text("mine too")
    before = snapshot(root)
    code, line = stsae("prepare", "--run-dir", str(root))
    assert code == 2
    assert line == (f"error: {root}: --run-dir is not empty (notes.txt, sub) and has no manifest.json, so it is "
                    "not an stsae run directory; choose a new or empty one, or pass --force to write into it")
    assert snapshot(root) == before


def test_force_writes_into_a_foreign_directory_without_touching_its_files(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / f"notes.tmp-{dead_pid()}").write_text("mine")
    before = snapshot(root)
    code, line = stsae("report", "--run-dir", str(root), "--force")
    assert code == 2 and reached_the_stage(line)
    assert snapshot(root, skip=frozenset({"run.log", ".stsae.lock"})) == before


def test_a_directory_left_by_a_failed_first_run_is_still_ours(tmp_path: Path) -> None:
    root = tmp_path / "run"
    for _ in range(2):
        code, line = stsae("report", "--run-dir", str(root))
        assert code == 2 and reached_the_stage(line)


def test_run_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "results.csv"
    root.write_text("a,b\n")
    code, line = stsae("prepare", "--run-dir", str(root))
    assert (code, line) == (2, f"error: {root}: --run-dir is a file, not a directory; choose another path")
    assert root.read_text() == "a,b\n"


def test_run_dir_below_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "results.csv"
    blocker.write_text("a,b\n")
    code, line = stsae("prepare", "--run-dir", str(blocker / "run"))
    assert code == 2
    assert line == (f"error: {blocker / 'run'}: --run-dir lies below {blocker}, which is a file, not a "
                    "directory; choose another path")
    assert blocker.read_text() == "a,b\n"


def test_read_only_run_dir_is_refused_without_talking_of_free_space(tmp_path: Path, monkeypatch) -> None:
    run_dir = ours(tmp_path / "run")
    real_open = os.open

    def read_only_fs(path, flags, *args):  # root ignores permission bits, so simulate a read-only mount
        if str(path).startswith(str(run_dir.root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_fs)
    before = snapshot(run_dir.root)
    code, line = stsae("prepare", "--run-dir", str(run_dir.root))
    assert (code, line) == (2, f"error: {run_dir.root}: run directory is not writable (Read-only file system); "
                               "make it writable or choose another --run-dir")
    assert snapshot(run_dir.root) == before


def test_environment_errors_name_the_right_fix() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "run/z.npy")
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES), "run/z.npy")
    assert environment_error_message(full).endswith("earlier outputs are intact, free space and rerun")
    assert environment_error_message(denied) == (
        "Permission denied writing run/z.npy; earlier outputs are intact, make it writable and rerun")


# --- symlinks ----------------------------------------------------------------------------------------


def test_symlinked_run_log_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run_dir = ours(tmp_path / "run")
    run_dir.log.symlink_to(outside)
    before = snapshot(run_dir.root)
    code, line = stsae("prepare", "--run-dir", str(run_dir.root))
    assert (code, line) == (2, f"error: {run_dir.log}: is a symbolic link; stsae writes only regular files "
                               "inside the run directory (remove the link and rerun)")
    assert outside.read_text() == "precious" and snapshot(run_dir.root) == before


def test_symlinked_extract_partial_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    np.save(outside, np.arange(4, dtype=np.float32))
    run_dir = write_fake_run(tmp_path / "run")
    partial = run_dir.embeddings_dir / "z.npy.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.symlink_to(outside)
    before, outside_bytes = snapshot(run_dir.root), outside.read_bytes()
    code, line = stsae("extract", "--run-dir", str(run_dir.root))
    assert (code, line) == (2, f"error: {partial}: is a symbolic link; stsae writes only regular files "
                               "inside the run directory (remove the link and rerun)")
    assert outside.read_bytes() == outside_bytes and snapshot(run_dir.root) == before


def test_preallocation_refuses_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep")
    (tmp_path / "z.npy.partial").symlink_to(outside)
    with pytest.raises(io.UnsafePathError, match=r"z.npy.partial: is a symbolic link"):
        io.preallocate_npy(tmp_path / "z.npy.partial", (4, 512))
    assert outside.read_bytes() == b"keep"


def test_atomic_write_refuses_a_symlinked_output(tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").symlink_to(outside)
    with pytest.raises(io.UnsafePathError, match=r"manifest.json: is a symbolic link"):
        io.write_json(tmp_path / "run" / "manifest.json", {"x": 1})
    assert outside.read_text() == "{}" and sorted(p.name for p in (tmp_path / "run").iterdir()) == ["manifest.json"]


def test_atomic_write_refuses_to_publish_a_temp_that_became_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    outside.write_bytes(b"outside")
    final = tmp_path / "run" / "z.npy"
    io.write_bytes(final, b"old")
    with pytest.raises(io.UnsafePathError, match=r"became a symbolic link before it was published"), \
            io.atomic_path(final) as tmp:
        tmp.unlink()
        tmp.symlink_to(outside)
    assert final.read_bytes() == b"old" and not final.is_symlink()
    assert sorted(p.name for p in final.parent.iterdir()) == ["z.npy"]


def test_symlinked_stage_folder_is_allowed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "big-disk" / "embeddings"
    elsewhere.mkdir(parents=True)
    run_dir = ours(tmp_path / "run")
    run_dir.embeddings_dir.symlink_to(elsewhere, target_is_directory=True)
    code, line = stsae("report", "--run-dir", str(run_dir.root))
    assert code == 2 and reached_the_stage(line)


# --- figures named in figures/index.json -----------------------------------------------------------


def index_figures(run_dir: RunDir, *names: str) -> None:
    """figures/index.json listing `names` as drawn (what the figures stage writes, minus the drawing)."""
    write_figure_index(run_dir, [FigureInfo(name, "data", name, "") for name in names])


def test_figure_index_naming_a_path_outside_figures_is_refused(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "a" / "b" / "run")
    (tmp_path / "a" / "secret.png").write_bytes(b"\x89PNG secret")
    index_figures(run_dir, "../../secret")
    before = snapshot(run_dir.root)
    code, line = stsae("report", "--run-dir", str(run_dir.root))
    assert (code, line) == (2, f"error: {run_dir.figure_index}: figure name '../../secret' is not a bare file "
                               "name (letters, digits, '_', '-', '.'); the report embeds only files inside "
                               "figures/")
    assert not run_dir.report_html.exists()
    assert snapshot(run_dir.root, skip=frozenset({"run.log", ".stsae.lock"})) == before


def test_symlinked_figure_png_is_not_embedded(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG secret")
    index_figures(run_dir, "pareto")
    (run_dir.figures_dir / "pareto.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(io.UnsafePathError, match=r"figures/pareto.png: is a symbolic link"):
        write_report(run_dir, "t")
    assert not run_dir.report_html.exists()


# --- a full disk during extract --------------------------------------------------------------------


def test_full_disk_at_extract_is_one_line_not_sigbus(tmp_path: Path, monkeypatch) -> None:
    run_dir = write_fake_run(tmp_path / "run")

    def disk_full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", disk_full)
    before = snapshot(run_dir.root)
    code, line = stsae("extract", "--run-dir", str(run_dir.root))
    assert (code, line) == (2, f"error: No space left on device writing {run_dir.embeddings_dir / 'z.npy.partial'}"
                               "; earlier outputs are intact, free space and rerun")
    after = snapshot(run_dir.root, skip=frozenset({"run.log", ".stsae.lock"}))
    assert {k: v for k, v in after.items() if not k.startswith("embeddings/")} == before
    assert not list(run_dir.embeddings_dir.glob("*.partial"))


def test_preallocated_npy_is_a_zero_array_with_its_blocks_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "z.npy.partial"
    io.preallocate_npy(path, (300, 512))
    array = np.load(path, mmap_mode="r+")
    assert array.dtype == np.float32 and array.shape == (300, 512) and not array.any()
    assert os.stat(path).st_blocks * 512 >= os.stat(path).st_size  # allocated, not sparse


def test_preallocation_falls_back_to_a_sparse_file_where_fallocate_is_unsupported(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    io.preallocate_npy(tmp_path / "z.npy.partial", (3, 512))
    assert np.load(tmp_path / "z.npy.partial").shape == (3, 512)
