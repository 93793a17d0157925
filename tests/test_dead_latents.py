"""Dead latents as Gao et al. count them: silent over the last N training samples, tracked by the trainer."""

from __future__ import annotations

import numpy as np
import torch

from stsae.eval.metrics import Sparsity
from stsae.train.trainer import Trainer
from test_trainer import datasets, planted, small_cfg


def test_tracker_marks_exactly_the_latents_silent_over_the_last_n_samples() -> None:
    """With a frozen model (lr ≈ 0) the latents that fire on the last N training samples can be
    recomputed from the batches; the trainer's dead set must be exactly their complement."""
    torch.manual_seed(0)
    z, z_aug, index, _ = planted(n_atoms=48)
    train, _ = datasets(z, z_aug, index)
    cfg = small_cfg(d_dict=64, k=2, lr=1e-12, steps=12, batch_size=32, warmup_steps=1, dead_after_samples=32)
    trainer = Trainer(train, None, cfg, "vanilla", cfg.d_dict, seed=0)
    trainer.train()
    last_steps = range(cfg.steps - cfg.dead_after_samples // cfg.batch_size, cfg.steps)
    rows = np.concatenate([train.pairs[trainer.batch_ids(step), 0] for step in last_steps])
    with torch.no_grad():
        fired = (trainer.model.encode(torch.from_numpy(z[rows])) > 0).any(0).numpy()
    metrics = trainer.dead_latents()
    assert 0 < (~fired).sum() < cfg.d_dict
    assert metrics["dead_fraction_train"] == (~fired).mean()
    assert (metrics["dead_window_samples"], metrics["samples_seen"]) == (32, 12 * 32)


def test_dead_fraction_is_undefined_before_n_samples_were_seen() -> None:
    z, z_aug, index, _ = planted(n_records=20)
    train, _ = datasets(z, z_aug, index)
    cfg = small_cfg(steps=3, batch_size=32, dead_after_samples=10_000)
    trainer = Trainer(train, None, cfg, "full", cfg.d_dict, seed=0)
    trainer.train()
    _, metrics = trainer.result()
    assert metrics["dead_fraction_train"] is None and metrics["samples_seen"] == 96


def test_a_rare_latent_looks_dead_on_a_small_test_set_but_is_alive_in_training() -> None:
    """Latent 1 fires once every 500 windows: 50 test windows never see it (the test-side count says
    dead), while the training tracker, reset whenever it fires within N samples, keeps it alive."""
    codes = np.zeros((50, 2), dtype=np.float32)
    codes[:, 0] = 1.0
    test = Sparsity(2)
    test.update(codes)
    assert test.never_fired_fraction() == 0.5
    z, z_aug, index, _ = planted(n_records=20)
    train, _ = datasets(z, z_aug, index)
    cfg = small_cfg(d_dict=2, k=1, steps=1, batch_size=32, dead_after_samples=1000)
    trainer = Trainer(train, None, cfg, "vanilla", 2, seed=0)
    trainer.step = 100  # 3200 samples seen; latent 1 last fired 400 samples ago, latent 0 just now
    trainer.since_fired = torch.tensor([0, 400])
    assert trainer.dead_latents()["dead_fraction_train"] == 0.0


def test_the_dead_window_shortens_to_fair_shares_at_small_k_and_never_grows() -> None:
    """N = min(dead_after_samples, ceil(fair shares · K / k)): a latent of a K = 1024, k = 32 dictionary
    should fire every 32 samples, so 160 fair shares are 5 120 samples; at K = 8192 the cap holds."""
    cfg = small_cfg(k=32, dead_after_samples=20_000, dead_after_fair_shares=160)
    assert [cfg.dead_window_for(size) for size in (1024, 2048, 4096, 8192)] == [5120, 10_240, 20_000, 20_000]
    assert cfg.model_copy(update={"dead_after_fair_shares": None}).dead_window_for(1024) == 20_000
    assert cfg.model_copy(update={"activation": "relu"}).dead_window_for(1024) == 20_000
    assert small_cfg(k=3, dead_after_samples=20_000, dead_after_fair_shares=0.5).dead_window_for(32) == 6


def test_the_trainer_counts_dead_and_feeds_auxk_on_its_k_s_window() -> None:
    """Latents silent for the fair-share window (here 64 samples, shorter than dead_after_samples = 1000)
    are dead to the report and to AuxK alike; on the 1000-sample window none is, and AuxK stays 0."""
    z, z_aug, index, _ = planted(n_records=20)
    train, _ = datasets(z, z_aug, index)
    auxk = {}
    for shares in (16, None):
        cfg = small_cfg(d_dict=4, k=1, steps=1, batch_size=32, dead_after_samples=1000, dead_after_fair_shares=shares)
        trainer = Trainer(train, None, cfg, "vanilla", 4, seed=0)
        trainer.step = 100
        trainer.since_fired = torch.tensor([0, 63, 64, 900])
        metrics = trainer.dead_latents()
        assert metrics["dead_window_samples"] == (64 if shares else 1000)
        assert metrics["dead_fraction_train"] == (0.5 if shares else 0.0)
        auxk[shares] = trainer.update()["l_auxk"]
    assert auxk[16] > 0 and auxk[None] == 0
