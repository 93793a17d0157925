"""Bad-input matrix: every user mistake ends in one line naming the file, field or key (CLI exit code 2),
or in a logged skip with its reason, and never changes what an earlier run already wrote.

Most cases copy one small finished run directory (prepare → extract → train → baselines on a cut-down
tests/configs/tiny.yaml), damage one thing, run the stage that reads it, and compare a SHA-256 of every
file before and after. The failing stage's own stage.json may disappear (the runner deletes it before a
stage runs, so a failed stage is never marked complete) but nothing may change content.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner, Result

from realformat_fixtures import (
    Channel,
    PulseSegment,
    PulseSubject,
    known_digital,
    mimic_iii_record_dir,
    mimic_iii_record_name,
    pulse_signal,
    write_matlab_struct_array,
    write_multisegment_record,
    write_pulsedb_subject,
)
from stsae.aging.associations import logistic_association
from stsae.cli import app
from stsae.config import load_config
from stsae.data.records import RawRecord
from stsae.data.windowing import signal_quality_mask, window_record
from stsae.errors import StsaeError
from stsae.eval.probe import classification_probe
from stsae.models.stsae import safetensors_bytes
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.stages import prepare as prepare_stage
from stsae.utils import io

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
# Files that describe the latest invocation rather than a stage's outputs: the append-only log, and the
# resolved config / manifest a run rewrites before its first stage (they change when the config does).
RUN_LEVEL = ("run.log", "config.resolved.yaml", "manifest.json")
runner = CliRunner()
_START = pd.Timestamp("2150-01-01 08:00").to_pydatetime()  # MIMIC record start


# ---- helpers ---------------------------------------------------------------------------------------------

def digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_outputs_unchanged(before: dict[str, str], root: Path, failed_stage_dir: str | None = None,
                             ignore: tuple[str, ...] = RUN_LEVEL) -> None:
    """Every stage output is byte-identical; only the failed stage's stage.json may be gone; no temp files."""
    after = digest(root)
    removable = {f"{failed_stage_dir}/stage.json"} if failed_stage_dir else set()
    old = {k: v for k, v in before.items() if k not in ignore}
    new = {k: v for k, v in after.items() if k not in ignore}
    assert set(old) - set(new) <= removable, f"files lost: {sorted(set(old) - set(new) - removable)}"
    assert {k: new[k] for k in old if k in new} == {k: old[k] for k in old if k in new}
    assert not set(new) - set(old), f"new files: {sorted(set(new) - set(old))}"
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit code 2, exactly one `error:` line and no traceback; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def cli(command: str, config: Path, run_dir: Path, *extra: str) -> Result:
    return runner.invoke(app, [command, "--config", str(config), "--run-dir", str(run_dir), *extra])


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.yaml cut to one ST-SAE and one baseline, so the shared base run takes seconds."""
    tree = yaml.safe_load(TINY.read_text())
    tree["train"].update(seeds=[0], ablations=[], d_dict_sweep=[], steps=10, checkpoint_every=5, eval_every=5)
    tree["baselines"].update(methods=["pca"], n_components=[4])
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def base_run(small_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base") / "run"
    for stage in ("prepare", "extract", "train", "baselines"):
        result = cli(stage, small_config, root)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished base run (the lock of the base run is never held here)."""
    target = tmp_path / "run"
    shutil.copytree(base_run, target)
    return target


def _model_path(run_dir: Path) -> Path:
    return RunDir(run_dir).stsae_checkpoint("full", 64, 0)


# ---- config mistakes -------------------------------------------------------------------------------------

def test_config_file_typo_names_file_key_and_suggestion(run_copy: Path, small_config: Path,
                                                         tmp_path: Path) -> None:
    tree = yaml.safe_load(small_config.read_text())
    tree["train"]["stpes"] = tree["train"].pop("steps")
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(tree))
    before = digest(run_copy)
    result = cli("train", bad, run_copy)
    assert_one_line_error(result, str(bad), "'train.stpes'", "did you mean 'train.steps'")
    assert_outputs_unchanged(before, run_copy, ignore=())


@pytest.mark.parametrize(("override", "needles"), [
    ("train.steps=many", ("'train.steps'", "valid integer")),
    ("train.d_dict=-8", ("'train.d_dict'", "greater than or equal to 1")),
    ("train.k=128", ("train.k=128", "train.d_dict=64")),
], ids=["wrong_type", "negative_K", "k_above_K"])
def test_invalid_config_value_names_the_key_and_touches_nothing(run_copy: Path, small_config: Path,
                                                                override: str, needles: tuple[str, ...]
                                                                ) -> None:
    before = digest(run_copy)
    result = cli("train", small_config, run_copy, "--set", override, "--force")
    assert_one_line_error(result, *needles)
    assert_outputs_unchanged(before, run_copy, ignore=())


# ---- real-data roots -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("make_root", "needle"), [
    (lambda root: root, "does not exist"),
    (lambda root: root.mkdir() or root, "is empty"),
], ids=["missing_root", "empty_root"])
def test_bad_data_root_names_the_config_key_and_keeps_windows(run_copy: Path, small_config: Path,
                                                              tmp_path: Path, make_root, needle: str) -> None:
    root = make_root(tmp_path / "pulsedb")
    before = digest(run_copy)
    result = cli("prepare", small_config, run_copy, "--force", "--set", "data.source=pulsedb",
                 "--set", f"data.pulsedb_root={root}")
    assert_one_line_error(result, "data.pulsedb_root", str(root), needle)
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="windows")


def _pulsedb_root(root: Path, n_good: int = 3) -> Path:
    """Segment_Files/PulseDB_MIMIC with n_good two-segment subjects (ages 30, 45, 60, ...)."""
    folder = root / "Segment_Files" / "PulseDB_MIMIC"
    for i in range(n_good):
        sid = f"p{i + 1:06d}"
        segments = [PulseSegment("c1", s, pulse_signal(2 * i + s)) for s in (1, 2)]
        write_pulsedb_subject(folder / f"{sid}.mat", PulseSubject(sid, 30.0 + 15 * i, "MF"[i % 2], segments))
    return folder


def _prepare_pulsedb(small_config: Path, root: Path, run_dir: Path) -> Result:
    return cli("prepare", small_config, run_dir, "--set", "data.source=pulsedb",
               "--set", f"data.pulsedb_root={root}", "--set", "data.pulsedb_folders=[PulseDB_MIMIC]")


def test_truncated_mat_file_is_skipped_with_logged_reason(small_config: Path, tmp_path: Path) -> None:
    folder = _pulsedb_root(tmp_path / "pdb")
    bad = write_pulsedb_subject(folder / "p000009.mat", PulseSubject(
        "p000009", 50.0, "M", [PulseSegment("c1", 1, pulse_signal(9))]))
    bad.write_bytes(bad.read_bytes()[:2048])
    run_dir = tmp_path / "run"
    result = _prepare_pulsedb(small_config, tmp_path / "pdb", run_dir)
    assert result.exit_code == 0, result.output
    log_text = (run_dir / "run.log").read_text()
    assert f"skipped: {bad}: not a readable MATLAB v7.3 (HDF5) file" in log_text
    meta = pd.read_parquet(RunDir(run_dir).meta)
    assert sorted(meta["patient_id"].unique()) == ["mimic_p000001", "mimic_p000002", "mimic_p000003"]


def test_mat_file_without_ppg_field_is_skipped_naming_the_field(small_config: Path, tmp_path: Path) -> None:
    folder = _pulsedb_root(tmp_path / "pdb")
    bad = write_matlab_struct_array(folder / "p000009.mat", "Subj_Wins",
                                    [{"SubjectID": "p000009", "Age": 50.0, "Gender": "M"}])
    run_dir = tmp_path / "run"
    result = _prepare_pulsedb(small_config, tmp_path / "pdb", run_dir)
    assert result.exit_code == 0, result.output
    assert f"skipped: {bad}: 'Subj_Wins' has no field 'PPG_Raw'" in (run_dir / "run.log").read_text()
    assert pd.read_parquet(RunDir(run_dir).meta)["patient_id"].nunique() == 3


def test_patient_without_age_is_kept_with_nan_age(small_config: Path, tmp_path: Path) -> None:
    folder = _pulsedb_root(tmp_path / "pdb")
    write_pulsedb_subject(folder / "p000009.mat", PulseSubject(
        "p000009", None, "F", [PulseSegment("c1", s, pulse_signal(20 + s)) for s in (1, 2)]))  # type: ignore[arg-type]
    run_dir = tmp_path / "run"
    result = _prepare_pulsedb(small_config, tmp_path / "pdb", run_dir)
    assert result.exit_code == 0, result.output
    meta = pd.read_parquet(RunDir(run_dir).meta)
    ageless = meta[meta["patient_id"] == "mimic_p000009"]
    assert len(ageless) == 2 and ageless["age"].isna().all() and ageless["split"].notna().all()
    assert meta.loc[meta["patient_id"] != "mimic_p000009", "age"].notna().all()


def _mimic_iii_root(root: Path) -> list[Path]:
    """Three subjects with 20 s of PLETH; returns their master headers."""
    headers = []
    for subject in (10, 11, 12):
        headers.append(write_multisegment_record(
            mimic_iii_record_dir(root, subject), mimic_iii_record_name(subject, _START), 125.0,
            [("0001", [Channel("PLETH", known_digital(subject, 2500))])], _START))
    return headers



def _prepare_mimic(small_config: Path, root: Path, run_dir: Path) -> Result:
    return cli("prepare", small_config, run_dir, "--set", "data.source=mimic_iii",
               "--set", f"data.mimic_iii_root={root}")


def test_wfdb_header_without_signal_file_is_skipped_with_logged_reason(small_config: Path,
                                                                       tmp_path: Path) -> None:
    _mimic_iii_root(tmp_path / "m3")
    header = write_multisegment_record(
        mimic_iii_record_dir(tmp_path / "m3", 13), mimic_iii_record_name(13, _START), 125.0,
        [("0001", [Channel("PLETH", known_digital(13, 2500))])], _START)
    signal_file = next(header.parent.glob("*_0001.dat"))
    signal_file.unlink()
    run_dir = tmp_path / "run"
    result = _prepare_mimic(small_config, tmp_path / "m3", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{header}: segment {signal_file.stem} signal unreadable" in (run_dir / "run.log").read_text()
    assert sorted(pd.read_parquet(RunDir(run_dir).meta)["patient_id"].unique()) == [
        "p000010", "p000011", "p000012"]


def test_wfdb_record_without_ppg_channel_is_skipped_with_logged_reason(small_config: Path,
                                                                       tmp_path: Path) -> None:
    _mimic_iii_root(tmp_path / "m3")
    header = write_multisegment_record(
        mimic_iii_record_dir(tmp_path / "m3", 13), mimic_iii_record_name(13, _START), 125.0,
        [("0001", [Channel("II", known_digital(13, 2500))])], _START)
    run_dir = tmp_path / "run"
    result = _prepare_mimic(small_config, tmp_path / "m3", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{header}: no PPG channel (PLETH/Pleth)" in (run_dir / "run.log").read_text()
    assert pd.read_parquet(RunDir(run_dir).meta)["patient_id"].nunique() == 3


# ---- sampling rates and QC -------------------------------------------------------------------------------

@pytest.mark.parametrize("fs", [100.0, 62.5, 250.0])
def test_other_sampling_rates_are_resampled_to_125_hz_windows(fs: float) -> None:
    t = np.arange(round(35 * fs)) / fs
    record = RawRecord("p", "p-r", np.sin(2 * np.pi * 1.2 * t), fs, "test")
    windows = window_record(record, load_config(TINY).data.windowing)
    assert windows.windows.shape == (3, 1250) and windows.windows.dtype == np.float32
    assert np.isfinite(windows.windows).all()
    assert windows.raw.shape == (3, round(10 * fs))


def test_sampling_rate_too_low_for_the_band_pass_names_the_config_key() -> None:
    record = RawRecord("p", "p-r", np.sin(np.arange(400) / 3.0), 20.0, "test")
    with pytest.raises(StsaeError, match=r"data\.windowing\.band_high_hz=12\.0 Hz must be below fs/2 = 10"):
        window_record(record, load_config(TINY).data.windowing)


def test_qc_rejects_nan_flatline_and_clipped_windows_with_named_reasons() -> None:
    fs = 125.0
    t = np.arange(1250) / fs
    pulse = np.sin(2 * np.pi * 1.2 * t)
    all_nan = np.full(1250, np.nan)
    flat = np.where(t < 5, pulse, 0.3)
    clipped = np.clip(1.15 * pulse, -1, 1)
    _, reason = signal_quality_mask(np.stack([all_nan, flat, clipped]), fs)
    assert reason.tolist() == ["nan", "flatline", "clipping"]


# ---- damaged stage files ---------------------------------------------------------------------------------

def test_windows_with_wrong_length_make_extract_fail_naming_the_file(run_copy: Path,
                                                                     small_config: Path) -> None:
    paths = RunDir(run_copy)
    n = np.load(paths.windows, mmap_mode="r").shape[0]
    io.save_npy(paths.windows, np.zeros((n, 1000), np.float32))
    before = digest(run_copy)
    result = cli("extract", small_config, run_copy, "--force")
    assert_one_line_error(result, str(paths.windows), "expected 1250 columns, got 1000")
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="embeddings")


def test_embeddings_with_wrong_dimension_make_train_fail_naming_the_file(run_copy: Path,
                                                                       small_config: Path) -> None:
    paths = RunDir(run_copy)
    io.save_npy(paths.z, np.zeros((np.load(paths.z).shape[0], 256), np.float32))
    before = digest(run_copy)
    result = cli("train", small_config, run_copy, "--force")
    assert_one_line_error(result, str(paths.z), "expected 512 columns, got 256")
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="models")


def test_memmap_shorter_than_its_index_makes_train_fail_naming_both(run_copy: Path,
                                                                    small_config: Path) -> None:
    paths = RunDir(run_copy)
    z = np.load(paths.z)
    io.save_npy(paths.z, z[:-5])
    before = digest(run_copy)
    result = cli("train", small_config, run_copy, "--force")
    assert_one_line_error(result, str(paths.z), f"has {len(z) - 5} rows but index.parquet lists {len(z)}")
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="models")


def test_checkpoint_with_wrong_shapes_is_refused_naming_tensor(run_copy: Path, small_config: Path) -> None:
    path = _model_path(run_copy)
    tensors = load_file(path)
    tensors["W_dec"] = tensors["W_dec"][:, :100].contiguous()
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(header_len))["__metadata__"]
    io.write_bytes(path, safetensors_bytes(tensors, metadata))
    before = digest(run_copy)
    result = cli("evaluate", small_config, run_copy, "--force")
    assert_one_line_error(result, str(path), "tensor 'W_dec' has shape [64, 100], expected [64, 512]")
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="eval")


class _Payload:
    """Unpickling this would create a marker file: the test proves the loader never unpickles."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["pickle", "torch_save", "garbage"])
def test_checkpoint_that_is_not_safetensors_is_refused_without_unpickling(run_copy: Path, small_config: Path,
                                                                         tmp_path: Path, kind: str) -> None:
    path = _model_path(run_copy)
    marker = tmp_path / "unpickled"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "torch_save":
        torch.save({"W_dec": torch.zeros(64, 512), "payload": _Payload(marker)}, path)
    else:
        path.write_bytes(os.urandom(4096))
    before = digest(run_copy)
    result = cli("evaluate", small_config, run_copy, "--force")
    assert_one_line_error(result, str(path), "not a readable safetensors file")
    assert not marker.exists()
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="eval")


@pytest.fixture
def disk_fills_while_writing_windows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The windows writer writes half of its first batch, then the disk is full."""
    original = prepare_stage.NpyRowWriter.append

    def append(self: prepare_stage.NpyRowWriter, rows: np.ndarray) -> None:
        original(self, rows[: len(rows) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(prepare_stage.NpyRowWriter, "append", append)
    yield


@pytest.mark.usefixtures("disk_fills_while_writing_windows")
def test_disk_full_mid_stage_keeps_old_outputs_and_leaves_stage_incomplete(run_copy: Path,
                                                                           small_config: Path) -> None:
    before = digest(run_copy)
    ctx = StageContext(load_config(small_config), RunDir(run_copy), fingerprint="", force=True)
    with pytest.raises(OSError, match="No space left on device"):
        run_stages(ctx, ["prepare"])
    assert_outputs_unchanged(before, run_copy, failed_stage_dir="windows")
    assert not (run_copy / "windows" / "stage.json").exists()


# ---- cohort and labels -----------------------------------------------------------------------------------

def test_cohort_with_one_patient_fails_clearly_and_writes_no_windows(small_config: Path,
                                                                     tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = cli("prepare", small_config, run_dir, "--set", "data.synthetic.n_patients=1")
    assert_one_line_error(result, "cohort has 1 patient(s)", "at least 3")
    assert not list((run_dir / "windows").glob("*"))


def test_probe_on_labels_of_one_class_is_skipped_with_reason() -> None:
    rng = np.random.default_rng(0)
    score = classification_probe(rng.normal(size=(40, 8)), np.ones(40), np.repeat(np.arange(8), 5), 3)
    assert score.value is None and score.reason == "only one class present on the probe rows"


def test_association_on_labels_of_one_class_is_skipped_with_reason() -> None:
    rng = np.random.default_rng(0)
    delta = pd.DataFrame({"delta_age": rng.normal(size=30), "age": rng.uniform(30, 80, 30),
                          "sex": np.array(["M", "F"])[np.arange(30) % 2], "htn": np.zeros(30)})
    result = logistic_association(delta, "htn", min_events=2)
    assert result == {"skipped": "htn: 0 cases and 30 non-cases among 30 patients; need at least 2 of each "
                                 "(aging.min_events)"}

