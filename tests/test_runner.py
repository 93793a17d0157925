"""The runner: stage graph from the contracts, provenance fingerprints, output checks, records."""

import json
import os
import subprocess
import sys

import pytest

from stsae.config import Config, load_config
from stsae.errors import StsaeError
from stsae.pipeline import provenance, runner
from stsae.rundir import RunDir

CHAIN = ["prepare", "extract", "train"]


@pytest.fixture
def fake_stages(monkeypatch):
    """Every stage replaced by one that logs its name and writes out.txt into its out_dir."""
    calls: list[str] = []

    def fake_entry(stage):
        def run(ctx):
            calls.append(stage.name)
            out = ctx.run_dir.root / stage.out_dir
            out.mkdir(parents=True, exist_ok=True)
            (out / "out.txt").write_text(f"{stage.name} output " * 100)
        return run

    monkeypatch.setattr(runner, "_entry", fake_entry)
    return calls


def _run(run_dir: RunDir, config: Config | None = None, force: bool = False) -> list[str]:
    return runner.run_stages(runner.StageContext(config or load_config(None), run_dir, "", force=force), CHAIN)


def test_every_upstream_is_a_stage_declared_earlier_in_pipeline_order():
    seen: set[str] = set()
    for stage in runner.STAGES:
        assert set(stage.upstream) <= seen, stage.name
        seen.add(stage.name)


def test_every_declared_read_is_a_config_key():
    config = load_config(None)
    for stage in runner.STAGES:
        for key in stage.reads:
            node = config
            for part in key.split("."):
                assert hasattr(node, part), f"{stage.name}: {key}"
                node = getattr(node, part)


def test_a_config_key_changes_only_the_fingerprints_of_stages_that_declare_it(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    base, changed = load_config(None), load_config(None, ["train.lr=0.01"])
    differing = {stage.name for stage in runner.STAGES
                 if runner.fingerprint(base, run_dir, stage) != runner.fingerprint(changed, run_dir, stage)}
    assert differing == {"train"}
    seeded = load_config(None, ["run.seed=5"])
    differing = {stage.name for stage in runner.STAGES
                 if runner.fingerprint(base, run_dir, stage) != runner.fingerprint(seeded, run_dir, stage)}
    assert differing == {"prepare", "extract", "baselines", "evaluate", "age", "ground", "report"}


def test_fresh_stages_are_skipped_and_a_config_change_reruns_it_and_its_downstream(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    assert _run(run_dir) == CHAIN
    assert _run(run_dir) == []
    assert _run(run_dir, load_config(None, ["extract.batch_size=7"])) == ["extract", "train"]


def test_a_code_change_reruns_the_stage_and_its_downstream(tmp_path, fake_stages, monkeypatch):
    run_dir = RunDir(tmp_path / "run")
    assert _run(run_dir) == CHAIN and _run(run_dir) == []
    real = runner.code_digest
    edited = lambda module: real(module) + ("x" if module.endswith("extract") else "")  # noqa: E731
    monkeypatch.setattr(runner, "code_digest", edited)
    assert _run(run_dir) == ["extract", "train"]
    assert "code" in runner.stale_reason(run_dir, runner.STAGE_BY_NAME["train"], "other")


def test_force_reruns_a_fresh_stage_and_makes_its_downstream_stale(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    assert runner.run_stages(runner.StageContext(load_config(None), run_dir, "", force=True), ["prepare"]) \
        == ["prepare"]
    assert _run(run_dir) == ["extract", "train"]


def test_an_edited_output_reruns_its_stage_and_everything_downstream(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    (run_dir.embeddings_dir / "out.txt").write_text("edited")
    assert _run(run_dir) == ["extract", "train"]


def test_a_vanished_output_reruns_its_stage(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    (run_dir.windows_dir / "out.txt").unlink()
    assert _run(run_dir) == CHAIN


def test_a_same_size_edit_with_the_old_mtime_restored_is_caught_by_the_content_hash(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    path = run_dir.models_dir / "out.txt"
    before = path.stat()
    path.write_text(path.read_text().upper())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert runner.stale_reason(run_dir, runner.STAGE_BY_NAME["train"],
                               runner.fingerprint(load_config(None), run_dir, runner.STAGE_BY_NAME["train"])) \
        == "output(s) changed or missing: models/out.txt"
    assert _run(run_dir) == ["train"]


def test_stage_record_lists_outputs_without_scratch_bookkeeping_or_other_stages(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    for scratch in (run_dir.train_checkpoints_dir / "x.safetensors", run_dir.stale_models_dir / "old.json",
                    run_dir.baselines_dir / "pca-n4.joblib", run_dir.models_dir / ".hidden.json",
                    run_dir.models_dir / "a.json.stsae-tmp-0a1b2c3d-123"):
        scratch.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_text("x")
    _run(run_dir)
    record = json.loads((run_dir.models_dir / "stage.json").read_text())
    assert list(record["outputs"]) == ["models/out.txt"]
    assert record["outputs_digest"] == provenance.digest(record["outputs"])


def test_overwriting_the_encoder_weights_at_the_same_path_reruns_extract(tmp_path, fake_stages):
    weights = tmp_path / "papagei_s.pt"
    weights.write_bytes(b"A" * 1000)
    config = load_config(None, [f"encoder.weights={weights}"])
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir, config)
    weights.write_bytes(b"B" * 1000)
    assert _run(run_dir, config) == ["extract", "train"]


def test_the_weights_hash_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    weights = tmp_path / "papagei_s.pt"
    weights.write_bytes(b"A" * 1000)
    cache = tmp_path / "cache.json"
    hashed: list[str] = []
    real = provenance.io.file_sha256
    monkeypatch.setattr(provenance.io, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    first = provenance.cached_sha256(weights, cache)
    assert provenance.cached_sha256(weights, cache) == first and hashed == ["papagei_s.pt"]
    weights.write_bytes(b"B" * 1000)
    assert provenance.cached_sha256(weights, cache) != first and len(hashed) == 2
    assert len(json.loads(cache.read_text())) == 1


def test_adding_a_file_under_a_data_root_reruns_prepare_and_its_downstream(tmp_path, fake_stages):
    root = tmp_path / "pulsedb"
    (root / "Segment_Files").mkdir(parents=True)
    (root / "Segment_Files" / "p000001.mat").write_bytes(b"x" * 10)
    config = load_config(None, [f"data.pulsedb_root={root}"])
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir, config)
    assert _run(run_dir, config) == []
    (root / "Segment_Files" / "p000002.mat").write_bytes(b"y" * 10)
    assert _run(run_dir, config) == CHAIN


def test_a_partial_run_always_runs_and_is_never_recorded_complete(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    calls: list[str] = []
    ctx = runner.StageContext(load_config(None), run_dir, "")
    assert runner.run_stages(ctx, ["train"], {"train": lambda c: calls.append("partial")}) == ["train"]
    assert calls == ["partial"] and not (run_dir.models_dir / "stage.json").exists()


def test_a_stage_receives_its_upstream_fingerprints(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    seen = {}
    ctx = runner.StageContext(load_config(None), run_dir, "", force=True)
    runner.run_stages(ctx, ["train"], {"train": lambda c: seen.update(c.upstream)})
    record = json.loads((run_dir.embeddings_dir / "stage.json").read_text())
    assert seen == {"extract": record["fingerprint"]}


def test_fingerprints_are_reproducible_in_another_run_directory(tmp_path, fake_stages):
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    _run(a)
    _run(b)
    for stage in CHAIN:
        record_a, record_b = (json.loads((d.root / runner.STAGE_BY_NAME[stage].out_dir / "stage.json").read_text())
                              for d in (a, b))
        assert record_a["fingerprint"] == record_b["fingerprint"]


def test_failed_stage_leaves_no_record(tmp_path, monkeypatch):
    def boom(stage):
        def run(ctx):
            raise RuntimeError("killed")
        return run

    monkeypatch.setattr(runner, "_entry", boom)
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError):
        runner.run_stages(runner.StageContext(load_config(None), run_dir, ""), ["prepare"])
    assert not (run_dir.root / "windows" / "stage.json").exists()


def test_run_dir_records_resolved_config_and_manifest(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    runner.run_stages(runner.StageContext(load_config(None, ["run.seed=3"]), run_dir, ""), ["prepare"])
    manifest = json.loads(run_dir.manifest.read_text())
    assert manifest["seed"] == 3
    assert manifest["versions"]["torch"]
    assert manifest["stages"]["prepare"]["seconds"] >= 0
    assert load_config(run_dir.config_resolved).run.seed == 3


def test_a_single_stage_refuses_upstream_outputs_edited_since_they_were_made(tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    (run_dir.windows_dir / "out.txt").write_text("edited")
    ctx = runner.StageContext(load_config(None), run_dir, "")
    with pytest.raises(StsaeError, match=r"windows/out\.txt: output of stage 'prepare' changed since it ran; "
                                         r"run `stsae prepare` \(or `stsae run`\) before `stsae extract`"):
        runner.run_stages(ctx, ["extract"])
    assert runner.run_stages(ctx, CHAIN) == CHAIN


def test_force_runs_a_single_stage_on_edited_upstream_outputs_and_the_next_run_rebuilds_them(
        tmp_path, fake_stages):
    run_dir = RunDir(tmp_path / "run")
    _run(run_dir)
    (run_dir.windows_dir / "out.txt").write_text("edited")
    forced = runner.StageContext(load_config(None), run_dir, "", force=True)
    assert runner.run_stages(forced, ["extract"]) == ["extract"]
    assert _run(run_dir) == CHAIN


RANK_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from stsae.config import load_config
from stsae.pipeline import runner
from stsae.rundir import RunDir

run_root, log = Path(sys.argv[1]), Path(sys.argv[2])
rank = os.environ["RANK"]

def file_barrier(name):
    (log.parent / f"{name}.{rank}").touch()
    while not all((log.parent / f"{name}.{other}").exists() for other in ("0", "1")):
        time.sleep(0.05)

def fake_entry(stage):
    def run(ctx):
        if stage.multi_rank:
            file_barrier(stage.name)  # as the real stages' process group does
        if rank == "0" and stage.name == "prepare":
            time.sleep(2.0)  # rank 0 records prepare late, as after a long assembly
        with log.open("a") as handle:
            handle.write(json.dumps([rank, stage.name, ctx.fingerprint]) + "\\n")
        out = ctx.run_dir.root / stage.out_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / f"out{rank}.txt").write_text(stage.name)
    return run

runner._entry = fake_entry
runner.run_stages(runner.StageContext(load_config(None), RunDir(run_root), ""),
                  ["prepare", "extract", "train", "baselines", "evaluate"])
"""


def test_torchrun_ranks_share_fingerprints_and_only_rank_0_runs_single_rank_stages(tmp_path):
    """Two ranks of `stsae run` (as torchrun starts them, without a process group: the fake stages need
    none). Rank 1 must wait for rank 0's record of each stage before fingerprinting the next, so both
    run extract and train under the same fingerprints, and leave baselines/evaluate to rank 0."""
    script, log = tmp_path / "rank.py", tmp_path / "calls.jsonl"
    script.write_text(RANK_SCRIPT)
    (tmp_path / "run").mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), str(log)],
                              env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}) for rank in (0, 1)]
    assert [proc.wait(timeout=300) for proc in procs] == [0, 0]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    by_rank = {rank: {stage: fp for r, stage, fp in calls if r == rank} for rank in ("0", "1")}
    assert list(by_rank["0"]) == ["prepare", "extract", "train", "baselines", "evaluate"]
    assert list(by_rank["1"]) == ["prepare", "extract", "train"]
    assert all(by_rank["1"][stage] == by_rank["0"][stage] for stage in by_rank["1"])
    record = json.loads((tmp_path / "run" / "models" / "stage.json").read_text())
    assert record["fingerprint"] == by_rank["1"]["train"]
