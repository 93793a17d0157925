"""Stage fingerprints: unchanged stages are skipped, a config change reruns exactly its downstream."""

import json

import pytest

from stsae.config import load_config
from stsae.pipeline import runner
from stsae.pipeline.rundir import RunDir
from stsae.pipeline.stages import STAGE_BY_NAME, STAGES


def _downstream(name: str) -> set[str]:
    found = {name}
    for stage in STAGES:
        if found & set(stage.upstream):
            found.add(stage.name)
    return found


def test_changing_a_train_key_changes_exactly_the_train_downstream_fingerprints():
    base = runner.fingerprints(load_config(None))
    changed = runner.fingerprints(load_config(None, ["train.lr=0.01"]))
    differing = {name for name in base if base[name] != changed[name]}
    assert differing == _downstream("train")
    assert "baselines" not in differing and "prepare" not in differing


def test_changing_the_seed_changes_every_seeded_stage():
    base = runner.fingerprints(load_config(None))
    changed = runner.fingerprints(load_config(None, ["run.seed=5"]))
    assert all(base[name] != changed[name] for name in base)


@pytest.fixture
def counting_stage(monkeypatch):
    calls: list[str] = []

    def fake_entry(stage):
        def run(ctx):
            calls.append(stage.name)
            (ctx.run_dir.root / stage.out_dir).mkdir(parents=True, exist_ok=True)
        return run

    monkeypatch.setattr(runner, "_load_entry", fake_entry)
    return calls


def test_fresh_stage_is_skipped_and_config_change_reruns_it(tmp_path, counting_stage):
    run_dir = RunDir(tmp_path / "run")
    ctx = runner.StageContext(load_config(None), run_dir, "")
    assert runner.run_stages(ctx, ["prepare", "extract"]) == ["prepare", "extract"]
    assert runner.run_stages(ctx, ["prepare", "extract"]) == []
    ctx2 = runner.StageContext(load_config(None, ["extract.batch_size=7"]), run_dir, "")
    assert runner.run_stages(ctx2, ["prepare", "extract"]) == ["extract"]
    assert counting_stage == ["prepare", "extract", "extract"]


def test_force_reruns_a_fresh_stage(tmp_path, counting_stage):
    run_dir = RunDir(tmp_path / "run")
    runner.run_stages(runner.StageContext(load_config(None), run_dir, ""), ["prepare"])
    ran = runner.run_stages(runner.StageContext(load_config(None), run_dir, "", force=True), ["prepare"])
    assert ran == ["prepare"]


def test_forced_upstream_rerun_makes_downstream_stale(tmp_path, counting_stage):
    run_dir = RunDir(tmp_path / "run")
    config = load_config(None)
    runner.run_stages(runner.StageContext(config, run_dir, ""), ["prepare", "extract"])
    runner.run_stages(runner.StageContext(config, run_dir, "", force=True), ["prepare"])
    assert runner.run_stages(runner.StageContext(config, run_dir, ""), ["prepare", "extract"]) == ["extract"]


def test_failed_stage_leaves_no_record(tmp_path, monkeypatch):
    def boom(stage):
        def run(ctx):
            raise RuntimeError("killed")
        return run

    monkeypatch.setattr(runner, "_load_entry", boom)
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError):
        runner.run_stages(runner.StageContext(load_config(None), run_dir, ""), ["prepare"])
    assert not (run_dir.root / "windows" / "stage.json").exists()


def test_run_dir_records_resolved_config_and_manifest(tmp_path, counting_stage):
    run_dir = RunDir(tmp_path / "run")
    runner.run_stages(runner.StageContext(load_config(None, ["run.seed=3"]), run_dir, ""), ["prepare"])
    manifest = json.loads(run_dir.manifest.read_text())
    assert manifest["seed"] == 3
    assert manifest["versions"]["torch"]
    assert manifest["stages"]["prepare"]["seconds"] >= 0
    assert load_config(run_dir.config_resolved).run.seed == 3


def test_missing_stage_module_is_reported_not_implemented(monkeypatch):
    stage = STAGE_BY_NAME["prepare"]
    fake = type(stage)(stage.name, stage.help, stage.sections, stage.upstream, stage.out_dir,
                       "stsae.stages.does_not_exist:run")
    with pytest.raises(runner.StageNotImplementedError, match="stage 'prepare' is not implemented yet"):
        runner._load_entry(fake)
