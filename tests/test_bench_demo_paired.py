"""bench_demo_paired: a version's `stsae` comes from its own src/ (not the installed package), its stage
seconds and output digests are read back, and a bad --base is one clear line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo_paired.py"

FAKE_MAIN = '''
import json, sys
from pathlib import Path
run_dir = Path(sys.argv[sys.argv.index("--run-dir") + 1])
(run_dir / "models").mkdir(parents=True)
(run_dir / "eval").mkdir()
(run_dir / "models" / "a.safetensors").write_bytes(b"weights")
(run_dir / "eval" / "leaderboard.json").write_text("{}")
stages = {"prepare": {"seconds": 1.5}, "train": {"seconds": 2.25}}
(run_dir / "manifest.json").write_text(json.dumps({"stages": stages}))
'''


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_demo_paired", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_version_runs_from_its_own_src_and_its_seconds_and_digests_are_read_back(bench, tmp_path):
    src = tmp_path / "src"
    (src / "stsae").mkdir(parents=True)
    (src / "stsae" / "__init__.py").write_text("")
    (src / "stsae" / "__main__.py").write_text(FAKE_MAIN)
    result = bench.run_demo(src, tmp_path / "demo.yaml", tmp_path / "run")
    assert result["stage_seconds"] == {"prepare": 1.5, "train": 2.25} and result["stage_sum_s"] == 3.75
    assert result["models_sha256"] == bench.digest([tmp_path / "run" / "models" / "a.safetensors"])
    assert result["models_sha256"] != result["leaderboard_sha256"]


def test_an_unknown_base_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--base", "no-such-ref-xyz", "--out", str(tmp_path / "o.json")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "--base 'no-such-ref-xyz' is not a commit" in proc.stderr
    assert not (tmp_path / "o.json").exists()
