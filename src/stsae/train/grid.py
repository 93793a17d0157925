"""The config-driven training grid: which (variant, K, seed) models the train stage owes, and filters.

`full` and every ablation at train.d_dict for every seed in train.seeds, then the K-sweep (`full` at
each K in train.d_dict_sweep) for the first seed; an entry that appears twice is trained once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from stsae.config import TrainSection
from stsae.errors import StsaeError
from stsae.train.trainer import VARIANTS, encoded_parts, model_recipe, training_code
from stsae.utils import io


class GridEntry(NamedTuple):
    """One model of the grid: (variant, d_dict, seed), comparable with the registry's plain tuples."""

    variant: str
    d_dict: int
    seed: int

    def matches(self, variants: set[str], sizes: set[int], seeds: set[int]) -> bool:
        return ((not variants or self.variant in variants) and (not sizes or self.d_dict in sizes)
                and (not seeds or self.seed in seeds))


def build_grid(cfg: TrainSection) -> list[GridEntry]:
    """Every model the config asks for, main grid first, in a stable order, without duplicates."""
    entries = [GridEntry(variant, cfg.d_dict, seed)
               for seed in cfg.seeds for variant in ("full", *cfg.ablations)]
    if cfg.seeds:
        entries += [GridEntry("full", size, cfg.seeds[0]) for size in cfg.d_dict_sweep]
    return list(dict.fromkeys(entries))


def main_entry(cfg: TrainSection) -> GridEntry:
    """The one "main model" every stage reports: `full` at train.d_dict with the FIRST seed of train.seeds.

    Evaluation headlines, the age model, grounding, figures and the scorecard all ask this function, so
    reordering `train.seeds` changes the main model everywhere at once and nowhere else.
    """
    if not cfg.seeds:
        raise StsaeError("train.seeds is empty: the main model is `full` at train.d_dict with the first seed")
    return GridEntry("full", cfg.d_dict, cfg.seeds[0])


def _parse_int(token: str, key: str) -> int:
    try:
        return int(token.split("=", 1)[1])
    except ValueError:
        raise StsaeError(f"--only {token!r}: {key}= needs an integer") from None


def select(entries: list[GridEntry], only: list[str]) -> list[GridEntry]:
    """Filter by tokens like ["full", "K=4096"] or ["vanilla", "seed=1"].

    Tokens of one kind are alternatives (OR); kinds combine with AND. Unknown tokens are errors.
    """
    variants: set[str] = set()
    sizes: set[int] = set()
    seeds: set[int] = set()
    for raw in only:
        token = raw.strip()
        if token.lower().startswith("k="):
            sizes.add(_parse_int(token, "K"))
        elif token.lower().startswith("seed="):
            seeds.add(_parse_int(token, "seed"))
        elif token in VARIANTS:
            variants.add(token)
        elif token:
            raise StsaeError(
                f"--only {token!r}: expected a variant ({', '.join(VARIANTS)}), K=<int> or seed=<int>")
    chosen = [e for e in entries if e.matches(variants, sizes, seeds)]
    if only and not chosen:
        raise StsaeError(f"--only {','.join(only)}: matches no model of the configured grid")
    return chosen


def expected_sidecar(entry: GridEntry, cfg: TrainSection, embeddings: str | None) -> dict[str, Any]:
    """The sidecar fields a finished model must carry to count as done under this config.

    embeddings: the extract stage's fingerprint; a model trained on other embeddings (other weights,
    seed, augmentation, windowing or raw data) is stale even if `train` is unchanged, and so is one
    trained by other code (`training_code`).
    """
    return {"variant": entry.variant, "d_dict": entry.d_dict, "seed": entry.seed,
            "activation": cfg.activation, "k": cfg.k, "steps": cfg.steps, "complete": True,
            "train_config": model_recipe(cfg), "embeddings": embeddings, "code": training_code()}


def is_finished(weights: Path, entry: GridEntry, cfg: TrainSection, embeddings: str | None) -> bool:
    """True when `weights` exists, its JSON sidecar is complete with matching settings and embeddings, and
    the weights are the bytes the sidecar vouches for (a damaged or replaced file is retrained)."""
    sidecar = weights.with_suffix(".json")
    if not (weights.is_file() and sidecar.is_file()):
        return False
    try:
        info = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return False
    expected = expected_sidecar(entry, cfg, embeddings)
    return all(info.get(key) == value for key, value in expected.items()) \
        and info.get("weights_sha256") == io.file_sha256(weights)


# A model's training time is about (K + this) latent-steps per encoded part: the per-model work that does
# not grow with K (input gathers, losses, optimiser, top-k over the batch). Measured on the demo (2 cores,
# one thread per worker, 600 steps, three encoded parts): K=128 8.4–8.9 s per model in a fused group, K=256
# 13.9 s, K=512 21.2 s, K=1024 32.4 s, i.e. about 6.5 s + 0.025 s·K, an overhead worth 260 latents.
MODEL_OVERHEAD_LATENTS = 256


def training_cost(entry: GridEntry, cfg: TrainSection) -> int:
    """`deal`'s estimate of one model's training time: (K + MODEL_OVERHEAD_LATENTS) per encoded triplet
    part, plus one more for what a step does once per model (decode, AuxK, optimiser). A vanilla model
    encodes z_t alone, `full` z_t, z_t+1 and z_aug_t (`encoded_parts`)."""
    return (entry.d_dict + MODEL_OVERHEAD_LATENTS) * (2 + len(encoded_parts(cfg, entry.variant)))


def deal(entries: list[GridEntry], shares: int, cfg: TrainSection) -> list[list[GridEntry]]:
    """Split `entries` into `shares` disjoint shares of about equal work, each in grid order.

    Why not plainly r, r+W, …: a step's cost grows with K, and the grid puts its largest dictionaries
    (the K-sweep) last, so dealing in grid order can hand one share most of the work (the demo's
    2-way deal gave 6×K128 + K256 + K1024 against 6×K128 + K512). Longest-first greedy instead: entries
    by cost descending (`training_cost`; grid order among equal costs) each go to the share with the least
    cost so far (lowest index on ties). Counting K alone left the demo's shares at 74 s and 97 s, since
    twelve K=128 models cost far more than their 1,536 latents. Deterministic in (entries, shares) alone,
    so every rank computes every share and a rerun after a crash gives each rank the same groups, which
    is what lets their checkpoints resume.
    """
    if shares < 1:
        raise StsaeError(f"cannot deal the grid into {shares} shares")
    dealt: list[list[GridEntry]] = [[] for _ in range(shares)]
    load = [0] * shares
    cost = {entry: training_cost(entry, cfg) for entry in entries}
    for entry in sorted(entries, key=lambda e: -cost[e]):
        target = load.index(min(load))
        dealt[target].append(entry)
        load[target] += cost[entry]
    order = {entry: i for i, entry in enumerate(entries)}
    return [sorted(share, key=order.__getitem__) for share in dealt]
