"""Training the grid on several ranks (train.parallel): how the grid is dealt, and that shares trained
apart write the bytes of one process, resume after a crash, and that torchrun really runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stsae.config import load_config
from stsae.errors import StsaeError
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.stages import train as train_stage
from stsae.train.grid import GridEntry, build_grid, deal, training_cost
from stsae.train.trainer import FusedTrainer
from stsae.utils.threads import limited_threads
from train_runs import config, ctx, embeddings_run_dir

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


DEMO = load_config(REPO / "configs" / "demo.yaml").train


def _demo_grid() -> list[GridEntry]:
    """configs/demo.yaml's grid: 12 models at K=128 (6 variants x 2 seeds), then K=256, 512, 1024."""
    return build_grid(DEMO)


def _load(share: list[GridEntry]) -> int:
    return sum(training_cost(entry, DEMO) for entry in share)


def test_training_cost_counts_the_encoded_triplet_parts():
    """(K + 256) per encoded part plus one per model: vanilla encodes z_t only, no_smooth / no_stab two
    parts, full all three."""
    costs = {variant: training_cost(GridEntry(variant, 128, 0), DEMO)
             for variant in ("vanilla", "no_smooth", "no_stab", "full", "no_div", "no_renorm")}
    assert costs == {"vanilla": 768, "no_smooth": 1152, "no_stab": 1152, "full": 1536, "no_div": 1536,
                     "no_renorm": 1536}


def test_dealt_shares_partition_the_grid_each_in_grid_order():
    grid = _demo_grid()
    shares = deal(grid, 3, DEMO)
    assert sorted(e for share in shares for e in share) == sorted(grid)
    for share in shares:
        assert share == [e for e in grid if e in share]


def test_dealing_balances_cost_where_round_robin_does_not():
    """The demo grid puts its three large dictionaries last: r, r+2, … would give rank 0 K=256 and 1024.
    Costs (`training_cost`): 2 x (3 x 1536 + 2 x 1152 + 768) at K=128, then 4 x (512 + 768 + 1280):
    25,600, two shares of 12,800."""
    grid = _demo_grid()
    round_robin = [grid[0::2], grid[1::2]]
    assert [_load(share) for share in round_robin] == [15616, 9984]
    shares = deal(grid, 2, DEMO)
    assert [_load(share) for share in shares] == [12800, 12800]
    assert sorted(sum(e.d_dict == 128 for e in share) for share in shares) == [6, 6]


def test_one_share_is_the_whole_grid_and_no_share_is_refused():
    grid = _demo_grid()
    assert deal(grid, 1, DEMO) == [grid]
    with pytest.raises(StsaeError, match="0 shares"):
        deal(grid, 0, DEMO)


def test_finished_models_leave_their_share_without_moving_the_others():
    """Shares are dealt over the whole selection, so a rerun gives each rank the groups it had (and the
    checkpoints those groups wrote)."""
    cfg = config().train
    grid = build_grid(cfg)
    todo = grid[1:]
    plan = train_stage.schedule(cfg, grid, todo, world=2)
    assert plan.parallel == "grid"
    expected = [sorted(e for e in share if e in todo) for share in deal(grid, 2, cfg)]
    assert [sorted(e for group in share for e in group) for share in plan.shares] == expected


def test_ddp_and_one_process_train_one_share_on_every_rank():
    cfg = config(parallel="ddp").train
    grid = build_grid(cfg)
    assert train_stage.schedule(cfg, grid, grid, world=2).parallel == "ddp"
    one = train_stage.schedule(config().train, grid, grid, world=1)
    assert one.parallel == "none" and len(one.shares) == 1


def _as_rank(monkeypatch: pytest.MonkeyPatch, this_rank: int, world: int = 2) -> None:
    """Run the stage as rank `this_rank` of `world`, without a process group (barriers are no-ops)."""
    monkeypatch.setattr(train_stage, "world_size", lambda: world)
    monkeypatch.setattr(train_stage, "rank", lambda: this_rank)
    monkeypatch.setattr(train_stage, "is_main_process", lambda: this_rank == 0)


def _weights(run_dir: RunDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.models_dir.glob("*.safetensors"))}


def test_each_rank_saves_its_share_and_together_they_write_the_one_process_bytes(tmp_path, monkeypatch):
    single = embeddings_run_dir(tmp_path / "single")
    train_stage.run(ctx(single, config()))
    shared = embeddings_run_dir(tmp_path / "shared")
    _as_rank(monkeypatch, 1)
    train_stage.run(ctx(shared, config()))
    rank1 = set(_weights(shared))
    _as_rank(monkeypatch, 0)
    train_stage.run(ctx(shared, config()))
    assert _weights(shared) == _weights(single)
    dealt = deal(build_grid(config().train), 2, config().train)[1]
    assert rank1 == {shared.stsae_checkpoint(e.variant, e.d_dict, e.seed).name for e in dealt}
    assert json.loads(shared.manifest.read_text())["train"]["parallel"] == "grid"


def test_a_rank_killed_mid_share_resumes_its_checkpoint_to_the_same_bytes(tmp_path, monkeypatch, caplog):
    single = embeddings_run_dir(tmp_path / "single")
    train_stage.run(ctx(single, config()))
    shared = embeddings_run_dir(tmp_path / "shared")
    resume = FusedTrainer.train

    def killed_after_first_checkpoint(self: FusedTrainer, until: int | None = None) -> None:
        resume(self, until=2)  # train.checkpoint_every=2
        raise KeyboardInterrupt

    _as_rank(monkeypatch, 1)
    monkeypatch.setattr(FusedTrainer, "train", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(ctx(shared, config()))
    assert list(shared.train_checkpoints_dir.glob("*.safetensors"))
    monkeypatch.setattr(FusedTrainer, "train", resume)
    with caplog.at_level("INFO", logger="stsae"):
        train_stage.run(ctx(shared, config()))
    assert "resumed from" in caplog.text
    _as_rank(monkeypatch, 0)
    train_stage.run(ctx(shared, config()))
    assert _weights(shared) == _weights(single)
    assert not shared.train_checkpoints_dir.exists()


def test_workers_are_one_under_torchrun_or_on_a_gpu(monkeypatch):
    monkeypatch.setattr(train_stage, "usable_cores", lambda: 4)
    grid = _demo_grid()
    assert train_stage.resolve_workers(2, torch.device("cpu"), world=1, entries=grid, cfg=DEMO) == 2
    assert train_stage.resolve_workers(2, torch.device("cpu"), world=2, entries=grid, cfg=DEMO) == 1
    assert train_stage.resolve_workers("auto", torch.device("cuda", 0), world=1, entries=grid, cfg=DEMO) == 1


def test_auto_workers_stop_where_the_largest_dictionary_would_bound_the_stage(monkeypatch):
    """The demo grid costs 25,600 (`training_cost`), 5,120 of it its K=1024 model: past 5 shares, the
    share holding that model alone takes longer than an even split would, so more workers only idle."""
    grid = _demo_grid()
    for cores, expected in ((2, 2), (16, 5)):
        monkeypatch.setattr(train_stage, "usable_cores", lambda cores=cores: cores)
        assert train_stage.resolve_workers("auto", torch.device("cpu"), world=1, entries=grid, cfg=DEMO) == expected


def test_local_workers_deal_the_grid_like_ranks():
    cfg = config(workers=2).train
    grid = build_grid(cfg)
    plan = train_stage.schedule(cfg, grid, grid, world=1, workers=2)
    assert plan.parallel == "workers" and plan.saves_own_models
    trained = [sorted(e for group in share for e in group) for share in plan.shares]
    assert trained == [sorted(share) for share in deal(grid, 2, cfg)]


def test_a_rerun_spawns_no_worker_for_a_share_with_nothing_left(tmp_path, monkeypatch):
    run_dir = embeddings_run_dir(tmp_path)
    train_stage.run(ctx(run_dir, config()))
    lost = deal(build_grid(config().train), 2, config().train)[0][0]
    weights = run_dir.stsae_checkpoint(lost.variant, lost.d_dict, lost.seed)
    weights.unlink()
    monkeypatch.setattr(train_stage, "ProcessPoolExecutor", None)  # calling it would fail the test
    train_stage.run(ctx(run_dir, config(workers=2)))
    facts = json.loads(run_dir.manifest.read_text())["train"]
    assert facts["parallel"] == "workers" and facts["models_trained"] == [weights.stem]


@pytest.mark.slow
def test_two_local_workers_write_the_bytes_of_one(tmp_path):
    """The reference process gets a worker's share of the cores: float sums (GEMMs, numpy's BLAS) depend on
    the thread count, so a 2-thread reference differs from 1-thread workers in the last bits."""
    one, two = embeddings_run_dir(tmp_path / "one"), embeddings_run_dir(tmp_path / "two")
    with limited_threads(max(1, train_stage.usable_cores() // 2)):
        train_stage.run(ctx(one, config(workers=1)))
    train_stage.run(ctx(two, config(workers=2)))
    assert _weights(two) == _weights(one) and _sidecars(two) == _sidecars(one)
    facts = json.loads(two.manifest.read_text())["train"]
    assert facts["parallel"] == "workers" and len(facts["shares"]) == 2 and all(facts["shares"])


# ---- real torchrun ------------------------------------------------------------------------------------
def _tiny_run_dirs(root: Path, names: tuple[str, ...]) -> list[RunDir]:
    """Copies of one tiny run directory through extract (copy2 keeps the mtimes stage.json vouches for)."""
    base = RunDir(root / "base")
    run_stages(StageContext(load_config(TINY), base, fingerprint=""), ["prepare", "extract"])
    return [RunDir(shutil.copytree(base.root, root / name)) for name in names]


def _train_cli(run_dir: RunDir, world: int, *settings: str) -> dict:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)] if world > 1 else []
    args = [arg for setting in settings for arg in ("--set", setting)]
    proc = subprocess.run([sys.executable, *launcher, "-m", "stsae", "train", "-q", "--config", str(TINY),
                           "--run-dir", str(run_dir.root), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # torchrun's default per rank
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(run_dir.manifest.read_text())["train"]


def _sidecars(run_dir: RunDir) -> dict[str, dict]:
    """Every sidecar without its one timing field (triplets/s), which differs between any two runs."""
    out = {}
    for path in sorted(run_dir.models_dir.glob("stsae-*.json")):
        info = json.loads(path.read_text())
        del info["metrics"]["train_last"]["triplets_per_s"]
        out[path.name] = info
    return out


@pytest.mark.slow
def test_two_rank_grid_torchrun_writes_the_one_process_bytes_and_retrains_only_what_is_lost(tmp_path):
    single, grid = _tiny_run_dirs(tmp_path, ("single", "grid"))
    _train_cli(single, 1)
    facts = _train_cli(grid, 2)
    assert facts["parallel"] == "grid" and facts["world_size"] == 2 and all(facts["shares"])
    assert _weights(grid) == _weights(single) and _sidecars(grid) == _sidecars(single)
    assert not grid.train_checkpoints_dir.exists()
    lost = grid.models_dir / f"{facts['shares'][1][0]}.safetensors"
    lost.unlink()
    again = _train_cli(grid, 2)
    assert again["models_trained"] == [lost.stem]
    assert _weights(grid) == _weights(single)


@pytest.mark.slow
def test_two_rank_ddp_torchrun_still_trains_every_model_on_both_ranks(tmp_path):
    (ddp,) = _tiny_run_dirs(tmp_path, ("ddp",))
    facts = _train_cli(ddp, 2, "train.parallel=ddp")
    assert facts["parallel"] == "ddp" and len(facts["shares"]) == 1
    assert sorted(_weights(ddp)) == sorted(f"{stem}.safetensors" for stem in facts["models_trained"])
