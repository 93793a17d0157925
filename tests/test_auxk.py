"""AuxK revives dead latents: planted dead atoms that explain the residual start firing, and only with AuxK;
the dead-latent tracker counts what Gao et al. count."""

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


def _plant_losing(model: STSAE, atoms: np.ndarray, offset: np.ndarray) -> None:
    """Latents 0–3 encode atoms 0–3 with a +1 bias, so on every row their pre-activations are ≥ 1;
    latents 4–7 hold atoms 4–7 as decoder directions and 0.2 × them as encoders: positive where their
    atom is present (≤ 0.5), but always below the live ones, so they never win the Top-2 (dead),
    although their atoms are exactly what the live latents leave in the residual. Without AuxK nothing
    trains them; they come back only once the live biases have shrunk (after 60–80 steps at lr 1e-3)."""
    unit = torch.from_numpy(atoms).float()
    with torch.no_grad():
        model.W_dec.copy_(unit)
        model.W_enc.copy_(torch.cat([unit[:N_ALIVE], 0.2 * unit[N_ALIVE:]]))
        model.b_enc.copy_(torch.tensor([1.0] * N_ALIVE + [0.0] * (N_ATOMS - N_ALIVE)))
        model.b_dec.copy_(model.standardise(torch.from_numpy(offset).float()[None])[0])


def _plant_negative(model: STSAE, atoms: np.ndarray, offset: np.ndarray) -> None:
    """Latents 0–3 encode atoms 0–3 exactly; latents 4–7 hold atoms 4–7 as decoder directions but an
    encoder pointing away with a negative bias: their pre-activation is negative on every row."""
    unit = torch.from_numpy(atoms).float()
    with torch.no_grad():
        model.W_dec.copy_(unit)
        model.W_enc.copy_(torch.cat([unit[:N_ALIVE], -unit[N_ALIVE:]]))
        model.b_enc.copy_(torch.tensor([0.0] * N_ALIVE + [-0.5] * (N_ATOMS - N_ALIVE)))
        model.b_dec.copy_(model.standardise(torch.from_numpy(offset).float()[None])[0])


def _train(plant, auxk_weight: float, steps: int, lr: float, auxk_code: str = "relu",
           fit_scale: bool = True) -> tuple[list[float], np.ndarray]:
    """(AuxK loss per step, firing rate float[8] per latent on all rows) after `steps` vanilla steps."""
    data, atoms, offset = _planted()
    cfg = TrainSection(d_dict=N_ATOMS, k=2, steps=steps, batch_size=128, lr=lr, warmup_steps=0,
                       dead_after_samples=256, aux_k=N_ATOMS - N_ALIVE, eval_every=10**6, auxk_code=auxk_code,
                       auxk_fit_scale=fit_scale, checkpoint_every=10**6, d_dict_sweep=[N_ATOMS],
                       loss_weights={"auxk": auxk_weight})
    trainer = Trainer(data, None, cfg, "vanilla", N_ATOMS, seed=0)
    plant(trainer.model, atoms, offset)
    losses = [trainer.update()["l_auxk"] for _ in range(steps)]
    with torch.no_grad():
        codes = trainer.model.encode(torch.from_numpy(data.z[: len(data.z)]))
    return losses, (codes > 0).float().mean(0).numpy()


def test_planted_latents_that_lose_the_topk_stay_dead_without_auxk():
    _, firing = _train(_plant_losing, auxk_weight=0.0, steps=50, lr=1e-3)
    assert (firing[N_ALIVE:] == 0).all()
    assert (firing[:N_ALIVE] > 0.2).all()


@pytest.mark.parametrize("fit_scale", [True, False])
def test_auxk_revives_dead_latents_that_explain_the_residual(fit_scale):
    losses, firing = _train(_plant_losing, auxk_weight=1 / 32, steps=50, lr=1e-3, fit_scale=fit_scale)
    assert losses[3] > 0.5  # the dead latents start explaining little of the residual
    assert losses[-1] == 0  # no latent is dead any more, so AuxK has nothing left to train
    assert (firing[N_ALIVE:] > 0.1).all()


@pytest.mark.parametrize(("auxk_code", "revived"), [("relu", False), ("straight_through", True)])
def test_only_straight_through_auxk_moves_latents_negative_on_every_row(auxk_code, revived):
    """relu AuxK (Gao et al., dictionary_learning; our default) gives such a latent no gradient;
    straight-through does (plain AuxK: at the fitted scale an all-zero reconstruction gets scale 0),
    but churned latents at scale (benchmarks/README.md, "AuxK code")."""
    _, firing = _train(_plant_negative, auxk_weight=1 / 32, steps=150, lr=3e-3, auxk_code=auxk_code,
                       fit_scale=False)
    assert bool((firing[N_ALIVE:] > 0.05).all()) is revived
    assert revived or (firing[N_ALIVE:] == 0).all()

def test_dead_tracker_agrees_with_a_gao_count_of_the_last_window():
    """The tracker's dead latents are exactly those with no positive code in the last
    `dead_after_samples` training rows, recounted here from the codes of every step's own batch."""
    data, _, _ = _planted()
    n_latents, steps = 16, 40
    cfg = TrainSection(d_dict=n_latents, k=2, steps=steps, batch_size=64, lr=3e-3, warmup_steps=0,
                       dead_after_samples=640, aux_k=4, eval_every=10**6, checkpoint_every=10**6,
                       d_dict_sweep=[n_latents])
    trainer = Trainer(data, None, cfg, "vanilla", n_latents, seed=0)
    with torch.no_grad():
        trainer.model.b_enc[12:] = -1e4  # planted: can never fire
    fired_per_step = []
    for step in range(steps):
        with torch.no_grad():
            codes = trainer.model.codes(trainer.model.standardise(data.batch(trainer.batch_ids(step))[0]),
                                        dense=False)
        fired = torch.zeros(n_latents, dtype=torch.bool)
        fired[codes.idx[codes.vals > 0]] = True
        fired_per_step.append(fired)
        trainer.update()
    window = cfg.dead_after_samples // cfg.batch_size
    gao_dead = ~torch.stack(fired_per_step[-window:]).any(0)
    assert torch.equal(trainer.since_fired >= cfg.dead_after_samples, gao_dead)
    assert gao_dead[12:].all() and not gao_dead.all()
    assert trainer.dead_latents()["dead_fraction_train"] == pytest.approx(float(gao_dead.float().mean()))
