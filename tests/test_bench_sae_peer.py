"""bench_sae_peer's pieces that need no dictionary_learning: metrics, paired speed, data, our quick run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from stsae.config import TrainSection

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sae_peer.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sae_peer", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sae_peer"] = module
    spec.loader.exec_module(module)
    return module


def test_held_out_ev_is_one_for_exact_and_zero_for_the_mean(bench: ModuleType) -> None:
    x = torch.randn(300, 8) * 3 + 5
    exact, mean = bench.HeldOutAccumulator(4), bench.HeldOutAccumulator(4)
    none = torch.zeros(4, dtype=torch.bool)
    for chunk in x.split(128):
        exact.add(chunk, chunk, none)
        mean.add(chunk, x.mean(0).expand_as(chunk), none)
    assert exact.result()["heldout_ev"] == pytest.approx(1.0, abs=1e-12)
    assert mean.result()["heldout_ev"] == pytest.approx(0.0, abs=1e-6)
    assert exact.result()["heldout_rows"] == 300


def test_held_out_ev_over_chunks_equals_one_pass(bench: ModuleType) -> None:
    gen = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(500, 6, generator=gen), torch.randn(500, 6, generator=gen)
    chunked, whole = bench.HeldOutAccumulator(2), bench.HeldOutAccumulator(2)
    none = torch.zeros(2, dtype=torch.bool)
    for a, b in zip(x.split(77), x_hat.split(77), strict=True):
        chunked.add(a, b, none)
    whole.add(x, x_hat, none)
    direct = 1 - float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert chunked.result()["heldout_ev"] == pytest.approx(direct, rel=1e-5)
    assert whole.result()["heldout_ev"] == pytest.approx(direct, rel=1e-5)


def test_never_fired_counts_latents_silent_in_every_chunk(bench: ModuleType) -> None:
    acc = bench.HeldOutAccumulator(10)
    x = torch.randn(3, 2)
    for fired_ids in ([0, 1], [1, 7], []):
        fired = torch.zeros(10, dtype=torch.bool)
        fired[fired_ids] = True
        acc.add(x, x, fired)
    assert acc.result()["heldout_never_fired"] == pytest.approx(0.7)


def test_held_out_ev_of_constant_rows_is_an_error_not_nan(bench: ModuleType) -> None:
    acc = bench.HeldOutAccumulator(2)
    acc.add(torch.ones(4, 3), torch.ones(4, 3), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(bench.StsaeError, match="held-out rows"):
        acc.result()


def _tiny_ours(bench: ModuleType, d_dict: int = 16, k: int = 8):
    data = bench.mixture_embeddings(n_train=400, n_held=2048, seed=1)
    cfg = TrainSection(d_dict=d_dict, k=k, batch_size=64, steps=3, warmup_steps=1, d_dict_sweep=[d_dict],
                       keep_best=False)
    return data, cfg, bench.Ours(data, cfg, "vanilla", d_dict, seed=0)


def test_held_out_metrics_find_planted_never_firing_latents(bench: ModuleType) -> None:
    data, _, ours = _tiny_ours(bench)
    planted = torch.tensor([2, 5, 11, 13])
    with torch.no_grad():
        ours.trainer.model.b_enc.fill_(1e4)  # every live latent clears the ReLU on every row
        ours.trainer.model.b_enc[planted] = -1e4  # the planted ones never can
    metrics = bench.held_out_metrics(ours, data.held_out)
    assert metrics["heldout_never_fired"] == pytest.approx(len(planted) / 16)
    assert metrics["heldout_rows"] == 2048


def test_ours_reports_dead_latents_before_the_step_that_trains_them(bench: ModuleType) -> None:
    *_, ours = _tiny_ours(bench)
    ours.trainer.since_fired[[1, 4, 9]] = ours.trainer.dead_window
    assert ours.step(0) == 3
    assert ours.trainer.step == 1


def test_paired_speed_recovers_the_planted_ratio_on_selected_steps(bench: ModuleType) -> None:
    ours = np.array([9.0, 1.0, 1.0, 2.0])
    peer = np.array([1.0, 2.0, 2.0, 4.0])
    out = bench.paired_speed(ours, peer, np.array([False, True, True, True]))
    assert out["ratio"] == pytest.approx(2.0)
    assert out["median_paired"] == pytest.approx(2.0)
    assert out["n_steps"] == 3
    assert bench.paired_speed(ours, peer, np.zeros(4, dtype=bool))["ratio"] is None


def test_steady_state_uses_only_steps_where_auxk_is_active_in_both(bench: ModuleType) -> None:
    steps = 6
    raw = {"seconds": {"stsae_vanilla": np.ones(steps), "peer_topk": np.array([1, 1, 1, 3, 3, 5.0])},
           "n_dead": {"stsae_vanilla": np.array([0, 0, 4, 4, 4, 0]), "peer_topk": np.array([0, 0, 0, 2, 2, 2])},
           "at_step": {"stsae_vanilla": {}, "peer_topk": {}}}
    out = bench.summarise(raw, steady_from=1)
    steady = out["speed_vs_peer"]["stsae_vanilla"]["steady_auxk_active"]
    assert steady["n_steps"] == 2 and steady["ratio"] == pytest.approx(3.0)
    assert out["contenders"]["stsae_vanilla"]["first_auxk_step"] == 2
    assert out["contenders"]["peer_topk"]["auxk_active_steps"] == 3


def test_round_robin_gives_every_contender_each_position(bench: ModuleType) -> None:
    names = ["a", "b", "c"]
    firsts = [next(bench.round_robin(names, step)) for step in range(3)]
    assert sorted(firsts) == names
    assert sorted(bench.round_robin(names, 5)) == names


def test_mixture_embeddings_are_low_rank_with_a_large_mean(bench: ModuleType) -> None:
    data = bench.mixture_embeddings(n_train=2000, n_held=1000, seed=0)
    facts = bench.describe(data)
    assert facts["n_held_out"] == 1000 and facts["n_train_rows"] >= 2000
    assert 4 < facts["effective_rank"] < 14
    assert 8 < facts["mean_norm_over_std"] < 12
    pairs = data.train.pairs
    assert np.all(pairs[:, 1] == pairs[:, 0] + 1)  # z_{t+1} is the next window of the same record


def test_quick_run_without_peer_trains_and_writes_json(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    assert bench.main(["--quick", "--no-peer", "--variants", "vanilla", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    ours = result["sizes"]["K256"]["contenders"]["stsae_vanilla"]
    assert set(ours["at_step"]) == {"5", "20"}
    assert ours["at_step"]["20"]["heldout_ev"] > ours["at_step"]["5"]["heldout_ev"]
    assert result["sizes"]["K256"]["speed_vs_peer"] == {}
    assert result["settings"]["peer"] is None


def test_a_warmup_past_the_last_checkpoint_is_refused_naming_the_flag(bench: ModuleType,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "6", "--warmup", "10"])
    assert "--warmup 10" in capsys.readouterr().err


def test_arms_train_side_by_side_each_with_its_own_overrides(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "arms.json"
    argv = ["--quick", "--no-peer", "--variants", "vanilla", "--out", str(out), "--set", "train.lr=0.002",
            "--arm", "base", "--arm", "st:train.auxk_code=straight_through,train.lr=0.001"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    contenders = result["sizes"]["K256"]["contenders"]
    assert set(contenders) == {"stsae_vanilla@base", "stsae_vanilla@st"}
    assert contenders["stsae_vanilla@st"]["lr"] == pytest.approx(contenders["stsae_vanilla@base"]["lr"] / 2)
    assert result["settings"]["arms"] == {"base": [], "st": ["train.auxk_code=straight_through", "train.lr=0.001"]}


@pytest.mark.parametrize("arms", [["a=b"], ["x", "x:train.lr=0.1"]])
def test_a_malformed_or_repeated_arm_is_refused_naming_the_flag(bench: ModuleType, arms: list[str],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args([arg for arm in arms for arg in ("--arm", arm)])
    assert "--arm" in capsys.readouterr().err


def test_decay_start_sets_our_schedule_and_an_out_of_range_one_is_refused(bench: ModuleType,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = bench.parse_args(["--decay-start", "0.8"])
    cfg = next(iter(bench.arm_configs(args).values()))
    assert cfg.lr_decay_start == 0.8
    assert next(iter(bench.arm_configs(bench.parse_args([])).values())).lr_decay_start == 1.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--decay-start", "1.5"])
    assert "--decay-start 1.5" in capsys.readouterr().err


def test_an_arm_sets_its_own_schedule_over_the_benchmark_s(bench: ModuleType) -> None:
    """The lr-schedule study trains arms with different decay starts side by side in one process."""
    args = bench.parse_args(["--decay-start", "0.8", "--warmup", "20", "--arm", "base",
                             "--arm", "early:train.lr_decay_start=0.1,train.warmup_steps=5"])
    arms = bench.arm_configs(args)
    assert (arms["base"].lr_decay_start, arms["base"].warmup_steps) == (0.8, 20)
    assert (arms["early"].lr_decay_start, arms["early"].warmup_steps) == (0.1, 5)
