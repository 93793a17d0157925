"""One provenance chain: every reviewer-reproduced stale-output case reruns exactly what it must.

Each case runs prepare → extract → train of tests/configs/tiny.yaml (cut to three models) on an existing
run directory after a change, and compares the models byte for byte with a clean run of the changed
config: a model kept from before the change, or resumed from a checkpoint written before it, differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from realformat_fixtures import PulseSegment, PulseSubject, pulse_signal, write_pulsedb_subject
from stsae.config import load_config
from stsae.models.papagei import random_papagei_s
from stsae.pipeline import runner
from stsae.rundir import RunDir
from stsae.train.trainer import FusedTrainer
from stsae.utils import io

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
SMALL = ["train.seeds=[0]", "train.d_dict_sweep=[32]", "train.steps=30"]
CHAIN = ["prepare", "extract", "train"]


def _run(root: Path, overrides: list[str], names: list[str] = CHAIN) -> list[str]:
    config = load_config(TINY, [*SMALL, *overrides])
    return runner.run_stages(runner.StageContext(config, RunDir(root), ""), names)


def _models(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((root / "models").glob("stsae-*.safetensors"))}


def _weights(path: Path, seed: int) -> Path:
    torch.save(random_papagei_s(seed).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """The whole tiny pipeline through the runner, so every stage runs under its config view."""
    root = tmp_path_factory.mktemp("base") / "run"
    _run(root, [], [stage.name for stage in runner.STAGES])
    return root


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(base_run, root)
    return root


def _assert_like_clean_run(root: Path, overrides: list[str], tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    _run(clean, overrides)
    assert _models(root) == _models(clean)
    assert sorted(p.name for p in (root / "models").iterdir() if p.suffix == ".json") == \
        sorted(p.name for p in (clean / "models").iterdir() if p.suffix == ".json")


def test_every_stage_reads_only_declared_config_keys_and_a_second_run_skips_all(base_run):
    assert (base_run / "report.html").is_file()
    assert _run(base_run, [], [stage.name for stage in runner.STAGES]) == []


def test_switching_encoder_weights_retrains_the_models(run_copy, tmp_path):
    change = [f"encoder.weights={_weights(tmp_path / 'papagei_s.pt', 7)}"]
    assert _run(run_copy, change) == ["extract", "train"]
    _assert_like_clean_run(run_copy, change, tmp_path)


def test_changing_the_run_seed_retrains_the_models(run_copy, tmp_path):
    assert _run(run_copy, ["run.seed=1"]) == CHAIN
    _assert_like_clean_run(run_copy, ["run.seed=1"], tmp_path)


def test_a_checkpoint_of_a_killed_train_is_not_resumed_after_the_augmentation_changed(
        run_copy, tmp_path, monkeypatch):
    save = FusedTrainer.save_checkpoint

    def save_then_die(self, path):
        save(self, path)
        raise KeyboardInterrupt("killed mid-training")

    monkeypatch.setattr(FusedTrainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(run_copy, ["train.steps=31"])
    assert list((run_copy / "models" / "checkpoints").glob("*.safetensors"))
    monkeypatch.setattr(FusedTrainer, "save_checkpoint", save)
    change = ["train.steps=31", "data.augment.noise_std=0.2"]
    assert _run(run_copy, change) == ["extract", "train"]
    _assert_like_clean_run(run_copy, change, tmp_path)


def test_a_larger_dictionary_retrains_and_sets_the_old_main_model_aside(run_copy, tmp_path):
    assert _run(run_copy, ["train.d_dict=128"]) == ["train"]
    _assert_like_clean_run(run_copy, ["train.d_dict=128"], tmp_path)
    assert (run_copy / "models" / "stale" / "stsae-full-K64-s0.safetensors").is_file()
    assert io.read_json(run_copy / "manifest.json")["train"]["main_model"] == "stsae-full-K128-s0"


def test_editing_windows_after_extract_reruns_prepare_and_everything_downstream(run_copy):
    windows = RunDir(run_copy).windows
    original = windows.read_bytes()
    edited = np.load(windows, mmap_mode="r+")
    edited[3, :10] = 0.5
    edited.flush()
    del edited
    assert _run(run_copy, []) == CHAIN
    assert windows.read_bytes() == original


def test_overwriting_the_weights_file_at_the_same_path_reruns_extract_and_train(tmp_path):
    weights = _weights(tmp_path / "papagei_s.pt", 7)
    root = tmp_path / "run"
    _run(root, [f"encoder.weights={weights}"])
    before = _models(root)
    _weights(weights, 8)
    assert _run(root, [f"encoder.weights={weights}"]) == ["extract", "train"]
    assert _models(root).keys() == before.keys() and _models(root) != before


def _pulsedb_subject(root: Path, i: int) -> None:
    subject = PulseSubject(f"p{i:06d}", 30.0 + 5 * i, "MF"[i % 2], [PulseSegment("1", 1, pulse_signal(i))])
    write_pulsedb_subject(root / "Segment_Files" / "PulseDB_MIMIC" / f"p{i:06d}.mat", subject)


def test_adding_a_pulsedb_subject_after_prepare_reruns_prepare_on_the_real_loader(tmp_path):
    data = tmp_path / "pulsedb"
    for i in range(8):
        _pulsedb_subject(data, i)
    source = ["data.source=pulsedb", f"data.pulsedb_root={data}", "data.pulsedb_folders=[PulseDB_MIMIC]"]
    root = tmp_path / "run"
    assert _run(root, source, ["prepare"]) == ["prepare"]
    assert _run(root, source, ["prepare"]) == []
    _pulsedb_subject(data, 8)
    assert _run(root, source, ["prepare"]) == ["prepare"]
    assert io.read_parquet(RunDir(root).meta)["patient_id"].nunique() == 9
