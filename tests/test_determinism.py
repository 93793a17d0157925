"""Same config and seed → byte-identical run (CPU, fp32); another seed → different data, embeddings, models.

`run_differences` is the one definition of "the same run" that test_resume_kill.py also uses: every file
byte-equal, except the log and values that are wall-clock facts (start/finish times, durations,
throughputs, when upstream stages ran, the report's "generated" stamp and stage-times table).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
REPO = TINY.parents[2]
# Byte-equality is required of these (the list), in every comparison.
KEY_FILES = ("windows/windows.npy", "embeddings/z.npy", "embeddings/z_aug.npy", "eval/leaderboard.json")
KEY_GLOBS = ("models/*.safetensors",)
# Wall-clock facts, dropped before JSON files are compared. stage.json's output identities hold mtimes and
# hashes of files that themselves hold timings; the files they describe are compared directly.
TIME_KEYS = frozenset({"started", "finished", "seconds", "triplets_per_s", "outputs", "upstream_outputs",
                       "outputs_digest"})
# manifest.json also records what this invocation did (models trained vs skipped), which a resumed run
# legitimately reports differently.
INVOCATION_KEYS = frozenset({"models_trained", "models_skipped"})
SKIPPED = frozenset({"run.log", ".stsae.lock"})
# report.html: its "generated" stamp and the stage-times table.
_REPORT_TIMES = re.compile(
    rb"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC|<section id=\"stages\">.*?</section>", re.S)


def stsae(command: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m stsae <command>` on tests/configs/tiny.yaml in a fresh process."""
    return subprocess.run([sys.executable, "-m", "stsae", command, "-q", "--config", str(TINY),
                           "--run-dir", str(run_dir), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def _strip(value: Any, drop: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_strip(v, drop) for v in value]
    return value


def _comparable(path: Path) -> Any:
    data = path.read_bytes()
    if path.suffix == ".json":
        drop = TIME_KEYS | INVOCATION_KEYS if path.name == "manifest.json" else TIME_KEYS
        return _strip(json.loads(data), drop)
    if path.suffix == ".html":
        return _REPORT_TIMES.sub(b"", data)
    return data


def run_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in SKIPPED)


def key_files(root: Path) -> list[str]:
    globbed = [str(p.relative_to(root)) for pattern in KEY_GLOBS for p in root.glob(pattern)]
    return sorted([*KEY_FILES, *globbed])


def run_differences(a: Path, b: Path) -> list[str]:
    """Files that differ between two run directories (after dropping wall-clock facts); [] when equal."""
    names_a, names_b = run_files(a), run_files(b)
    if names_a != names_b:
        return [f"file sets differ: only in a {sorted(set(names_a) - set(names_b))}, "
                f"only in b {sorted(set(names_b) - set(names_a))}"]
    diffs = [name for name in names_a if _comparable(a / name) != _comparable(b / name)]
    diffs += [f"{name} (bytes)" for name in key_files(a)
              if (a / name).read_bytes() != (b / name).read_bytes()]
    return diffs


@pytest.fixture(scope="module")
def seed0_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed0") / "run"
    result = stsae("run", root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.slow
def test_two_runs_with_the_same_seed_are_byte_identical(seed0_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = stsae("run", again)
    assert result.returncode == 0, result.stderr
    assert len(key_files(seed0_run)) == len(KEY_FILES) + 5  # full×2 seeds, vanilla×2, K=32 sweep
    assert run_differences(seed0_run, again) == []


@pytest.mark.slow
def test_another_seed_gives_other_windows_embeddings_and_models(seed0_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    for command, extra in (("prepare", ()), ("extract", ()), ("train", ("--only", "full,K=64,seed=0"))):
        result = stsae(command, other, "--set", "run.seed=1", *extra)
        assert result.returncode == 0, result.stderr
    for name in ("windows/windows.npy", "embeddings/z.npy", "embeddings/z_aug.npy",
                 "models/stsae-full-K64-s0.safetensors"):
        assert (other / name).read_bytes() != (seed0_run / name).read_bytes(), name
