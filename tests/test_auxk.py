"""AuxK revives dead latents: planted dead atoms that explain the residual start firing, and only with AuxK."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from stsae.config import TrainSection
from stsae.data.dataset import WindowTripletDataset
from stsae.models.stsae import STSAE
from stsae.train.trainer import Trainer

D = 512
N_ATOMS = 8
N_ALIVE = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _planted(n: int = 2000, seed: int = 0) -> tuple[WindowTripletDataset, np.ndarray, np.ndarray]:
    """z = offset + c @ atoms, two of eight orthonormal atoms active per row with codes in [0.5, 2.5]."""
    rs = np.random.default_rng(seed)
    atoms = np.linalg.qr(rs.normal(size=(D, N_ATOMS)))[0].T
    codes = np.zeros((n, N_ATOMS))
    for row in range(n):
        codes[row, rs.choice(N_ATOMS, 2, replace=False)] = rs.uniform(0.5, 2.5, 2)
    offset = 10 * rs.normal(size=D)
    z = (offset + codes @ atoms + 0.01 * rs.normal(size=(n, D))).astype(np.float32)
    index = pd.DataFrame({"record_id": np.repeat(np.arange(n // 20), 20).astype(str),
                          "segment_idx": np.tile(np.arange(20), n // 20), "split": "train"})
    return WindowTripletDataset(z, z, index, "train"), atoms, offset


def _plant_half_dead(model: STSAE, atoms: np.ndarray, offset: np.ndarray) -> None:
    """Latents 0–3 encode atoms 0–3 exactly; latents 4–7 hold atoms 4–7 as decoder directions but an
    encoder pointing away with a negative bias, so they never win the Top-K (dead) although their
    atoms are exactly what the live latents leave in the residual."""
    unit = torch.from_numpy(atoms).float()
    with torch.no_grad():
        model.W_dec.copy_(unit)
        model.W_enc.copy_(torch.cat([unit[:N_ALIVE], -unit[N_ALIVE:]]))
        model.b_enc.copy_(torch.tensor([0.0] * N_ALIVE + [-0.5] * (N_ATOMS - N_ALIVE)))
        model.b_dec.copy_(model.standardise(torch.from_numpy(offset).float()[None])[0])


def _train(auxk_weight: float, steps: int = 150) -> tuple[list[float], np.ndarray]:
    """(AuxK loss per step, firing rate float[8] per latent on all rows) after `steps` vanilla steps."""
    data, atoms, offset = _planted()
    cfg = TrainSection(d_dict=N_ATOMS, k=2, steps=steps, batch_size=128, lr=3e-3, warmup_steps=0,
                       dead_after_samples=256, aux_k=N_ATOMS - N_ALIVE, eval_every=10**6,
                       checkpoint_every=10**6, d_dict_sweep=[N_ATOMS], loss_weights={"auxk": auxk_weight})
    trainer = Trainer(data, None, cfg, "vanilla", N_ATOMS, seed=0)
    _plant_half_dead(trainer.model, atoms, offset)
    losses = [trainer.update()["l_auxk"] for _ in range(steps)]
    with torch.no_grad():
        codes = trainer.model.encode(torch.from_numpy(data.z[: len(data.z)]))
    return losses, (codes > 0).float().mean(0).numpy()


def test_planted_latents_are_dead_without_auxk():
    _, firing = _train(auxk_weight=0.0)
    assert (firing[N_ALIVE:] == 0).all()
    assert (firing[:N_ALIVE] > 0.2).all()


def test_auxk_revives_dead_latents_that_explain_the_residual():
    losses, firing = _train(auxk_weight=1 / 32)
    assert losses[5] > 0.9  # the dead latents start explaining nothing of the residual
    assert np.mean(losses[-10:]) < 0.5
    assert (firing[N_ALIVE:] > 0.05).all()
