"""`evaluate` stage: score every ST-SAE and baseline; write eval/leaderboard.json and eval/pareto.json.

One row per model, plus one matched-sparsity row per dense baseline with more than k components: k-sparse
codes re-encoded on its own dictionary (`encode_k_sparse`) with k = the L0 of the main model
(`stsae.train.grid.main_entry`: `full` at train.d_dict with the first seed); a baseline of at most k
components has no such row, since its k-sparse code is the dense code. Every field: `LeaderboardRow`.

Reconstruction, sparsity, consistency and lag-1 are measured on the test split. Dead latents follow
Gao et al.: a latent is dead when it did not fire on the last N training samples (the trainer's
sidecar states N); the test-side count of never-fired latents is kept beside it with the number of
test windows. Lag-1 is measured within records (`stsae.eval.temporal.WithinRecordLag1`), with the
share of the code's variance that lies between records beside it. Consistency is reported on the
stability augmentations L_stab trained on and on held-out families it never saw.

Linear probes are fit on train patients and scored on held-out (val + test) patients; the phenotypes
(HTN, T2D) are also probed adjusted for age and sex, with the AUROC increment over age + sex alone and
its patient-bootstrap CI. The single best concept per factor is chosen on train patients and its |r|
reported on held-out patients.

Seed stability matches live atoms (fired on at least one test window) of seed replicates, and
separately of `eval.stability_subsamples` refits of the main model on 50 % patient subsamples of the
train split with the same step budget; both sit beside a data-aware null (untrained dictionaries
initialised by the trainer's own code, different seeds) and the isotropic random-unit null.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from stsae.config import EvalSection, TrainSection
from stsae.data.dataset import WindowTripletDataset, read_rows, temporal_pairs
from stsae.data.store import EMBEDDING_DIM, Embeddings, load_embeddings, load_heldout_augmented
from stsae.errors import InputDataError, StsaeError
from stsae.eval import leaderboard as lb
from stsae.eval.leaderboard import LeaderboardRow
from stsae.eval.metrics import StreamedMetrics, stream_metrics, streamed_mean
from stsae.eval.probe import (
    PHENOTYPES,
    AdjustedPhenotype,
    ProbeScore,
    ProbeSet,
    adjusted_phenotypes,
    age_sex_scores,
    available_factors,
    probe_heldout,
    single_concepts_heldout,
)
from stsae.eval.stability import (
    StabilityResult,
    analytical_null_mean_cos,
    covariance_null,
    random_null,
    stability_against,
)
from stsae.eval.temporal import lag1_within_record, record_runs
from stsae.models.registry import (
    BaselineConceptModel,
    ConceptModel,
    ModelInfo,
    StsaeConceptModel,
    k_sparse_view,
    list_models,
    load_concept_model,
)
from stsae.pipeline.contract import StageContext, StageContract
from stsae.train.grid import main_entry
from stsae.utils import io
from stsae.utils.device import CPU, device_facts, resolve_device
from stsae.utils.seeding import derive_seed, rng
from stsae.utils.threads import limited_threads

log = logging.getLogger(__name__)

SEED_KEYS = ("seed_stability_mean_cos", "seed_stability_frac_07", "seed_stability_frac_09")
SUBSAMPLE_KEYS = ("subsample_stability_mean_cos", "subsample_stability_frac_07", "subsample_stability_frac_09")
NULL_KEYS = ("stability_live_atoms", "stability_null_data_mean_cos", "stability_null_data_frac_07",
             "stability_null_isotropic_mean_cos")
DEAD_TRAIN_KEYS = ("dead_fraction_train", "dead_window_samples")
# Train rows the data-aware nulls are built from (the trainer's own cap is train.stats_max_rows).
COVARIANCE_MAX_ROWS = 20_000
# Dense codes a baseline keeps for its matched-sparsity pass (the demo's nmf-n128 needs ~15 MB).
DENSE_CODES_MEMO_BYTES = 64 << 20


@dataclass
class References:
    """What every row is compared with: raw-embedding probes, the held-out age+sex-only phenotype scores
    (float[m] per phenotype) and the raw+age+sex adjusted phenotype probes."""

    raw: dict[str, ProbeScore]
    age_sex: dict[str, np.ndarray]
    raw_adjusted: dict[str, AdjustedPhenotype]


@dataclass
class EvalData:
    """Everything shared by all models: z memmaps, the test rows and the probe set."""

    emb: Embeddings
    z_aug_heldout: np.ndarray | None  # float32[M, 512] memmap, or None without held-out families
    train_mean: np.ndarray  # float32[512]
    rows: np.ndarray  # int64[N] sorted test rows evaluated
    pairs: np.ndarray  # int64[P, 2] temporal pairs within `rows`
    probe_rows: np.ndarray  # int64[n] sorted rows of train patients and held-out patients
    probe_z: np.ndarray  # float32[n, 512] their embeddings, read once: every model and the raw reference use them
    probes: ProbeSet


def whole_patient_subset(rows: np.ndarray, patients: np.ndarray, cap: int | None,
                         generator: np.random.Generator) -> np.ndarray:
    """Sorted subset of `rows` made of whole patients in seeded random order, at most `cap` rows
    (at least one patient). patients: patient_id of each row in `rows`."""
    if cap is None or len(rows) <= cap:
        return rows
    ids, counts = np.unique(patients, return_counts=True)
    order = generator.permutation(len(ids))
    cumulative = np.cumsum(counts[order])
    chosen = ids[order[: max(1, int(np.searchsorted(cumulative, cap, side="right")))]]
    return np.sort(rows[np.isin(patients, chosen)])


def _probe_set(meta: pd.DataFrame, emb: Embeddings, cfg: EvalSection, seed: int) -> tuple[np.ndarray, ProbeSet]:
    """Probe rows (train patients capped at probe_max_rows, held-out val + test patients capped alike)
    and their labels; age and sex become the covariates of the adjusted phenotype probes."""
    patients, split = emb.index["patient_id"].to_numpy(), emb.index["split"].to_numpy()
    sides = []
    for name, mask in (("fit", split == "train"), ("score", np.isin(split, ("val", "test")))):
        rows = np.flatnonzero(mask)
        sides.append(whole_patient_subset(rows, patients[rows], cfg.probe_max_rows, rng(seed, "eval", "probe", name)))
    probe_rows = np.sort(np.concatenate(sides))
    factors = available_factors(meta.loc[emb.index["window_id"].to_numpy()[probe_rows]].reset_index())
    covariates = (np.column_stack([factors["age"][1], factors["sex"][1]])
                  if {"age", "sex"} <= factors.keys() else None)
    return probe_rows, ProbeSet(split[probe_rows] == "train", patients[probe_rows], factors, covariates)


def _prepare(ctx: StageContext, emb: Embeddings, cfg: EvalSection, seed: int) -> tuple[EvalData, pd.DataFrame]:
    train_rows, test_rows = emb.rows("train"), emb.rows("test")
    for split, rows in (("train", train_rows), ("test", test_rows)):
        if len(rows) == 0:
            raise InputDataError(f"{ctx.run_dir.index}: no rows with split == '{split}'")
    patients = emb.index["patient_id"].to_numpy()
    rows = whole_patient_subset(test_rows, patients[test_rows], cfg.max_eval_rows, rng(seed, "eval", "rows"))
    pairs = temporal_pairs(emb.index)
    pairs = pairs[np.isin(pairs[:, 0], rows) & np.isin(pairs[:, 1], rows)]
    if len(pairs) and np.any(pairs[:, 1] != pairs[:, 0] + 1):
        raise InputDataError(f"{ctx.run_dir.index}: rows of a record must be consecutive and in "
                             "segment_idx order (prepare writes each record's windows together)")
    meta = io.read_parquet(ctx.run_dir.meta).set_index("window_id")
    unknown = np.setdiff1d(emb.index["window_id"].to_numpy(), meta.index.to_numpy())
    if unknown.size:
        raise InputDataError(f"{ctx.run_dir.meta}: window_id {unknown[0]} of the embeddings index is missing")
    probe_rows, probes = _probe_set(meta, emb, cfg, seed)
    log.info("evaluating %d test windows (%d temporal pairs); probes fit on %d train windows, scored on %d "
             "held-out windows, for %s", len(rows), len(pairs), int(probes.fit.sum()),
             int((~probes.fit).sum()), sorted(probes.factors))
    data = EvalData(emb, load_heldout_augmented(ctx.run_dir, len(emb.index)), streamed_mean(emb.z, train_rows),
                    rows, pairs, probe_rows, np.asarray(read_rows(emb.z, probe_rows), dtype=np.float32), probes)
    return data, meta


def reference_hr_lag1(meta: pd.DataFrame, data: EvalData) -> float | None:
    """`lag1_within_record` of the planted heart rate on the evaluated windows (synthetic runs): the
    value a concept that tracks HR perfectly would reach, so the concepts' number has a scale."""
    if "hr_bpm" not in meta.columns:
        return None
    window_ids = data.emb.index["window_id"].to_numpy()[data.rows]
    hr = pd.to_numeric(meta.loc[window_ids, "hr_bpm"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(hr).all():
        return None
    pos = np.searchsorted(data.rows, data.pairs) if len(data.pairs) else np.empty((0, 2), dtype=np.int64)
    return lag1_within_record(hr[:, None], record_runs(len(data.rows), pos)).value


def main_stsae(infos: list[ModelInfo], train_cfg: TrainSection) -> ModelInfo | None:
    """The registry entry of the one main model (`main_entry`), or None (logged) when it is not trained."""
    entry = main_entry(train_cfg)
    for info in infos:
        if info.family == "stsae" and (info.variant, info.d_dict, info.seed) == (entry.variant, entry.d_dict,
                                                                                  entry.seed):
            return info
    log.warning("main model stsae-%s-K%d-s%d is not among the trained models", entry.variant, entry.d_dict,
                entry.seed)
    return None


def _sidecar(info: ModelInfo) -> dict[str, Any]:
    return json.loads(info.path.with_suffix(".json").read_text())


def _fill_streamed(row: LeaderboardRow, m: StreamedMetrics) -> None:
    row.ev, row.l0, row.n_test_windows = m.ev, m.l0, m.n_windows
    row.never_fired_test_fraction = m.never_fired_fraction
    row.consistency_jaccard, row.consistency_cosine = m.consistency_jaccard, m.consistency_cosine
    row.consistency_heldout_aug = m.consistency_heldout_aug
    row.lag1_within_record, row.between_record_variance_share = m.lag1_within.value, m.lag1_within.between_share
    row.lag1_pooled, row.lag1_pooled_unweighted = m.lag1.value, m.lag1.unweighted
    if m.consistency_heldout_aug is None:
        row.skip(("consistency_heldout_aug",), "no held-out augmentation (data.augment.heldout_families "
                 "empty when extracted)")
    if m.lag1_within.reason:
        row.skip(("lag1_within_record",), m.lag1_within.reason)
    if m.lag1.reason:
        row.skip(("lag1_pooled", "lag1_pooled_unweighted"), m.lag1.reason)


def _fill_dead_train(row: LeaderboardRow, info: ModelInfo) -> None:
    """Gao et al.'s training-time dead fraction from the ST-SAE's sidecar (None before N samples)."""
    if info.family != "stsae" or row.matched_sparsity:
        row.skip(DEAD_TRAIN_KEYS, "baselines have no training-time firing record")
        return
    metrics = _sidecar(info).get("metrics") or {}
    row.dead_fraction_train = metrics.get("dead_fraction_train")
    row.dead_window_samples = metrics.get("dead_window_samples")
    if row.dead_window_samples is None:
        row.skip(DEAD_TRAIN_KEYS, "sidecar predates the dead-latent tracker (retrain)")
    elif row.dead_fraction_train is None:
        row.skip(("dead_fraction_train",), f"training saw {metrics.get('samples_seen')} samples, fewer "
                 f"than the {row.dead_window_samples} a latent must stay silent for")


def _fill_probes(row: LeaderboardRow, codes: np.ndarray, data: EvalData, cfg: EvalSection,
                 references: References, seed: int) -> None:
    """Held-out probes, the age+sex-adjusted phenotype probes and single-concept |r| of one view."""
    probes = data.probes
    for name, score in probe_heldout(codes, probes).items():
        row.probe[name] = {"metric": score.metric, "value": score.value, "raw_value": references.raw[name].value}
        if score.reason:
            row.reasons[f"probe.{name}"] = score.reason
    adjusted = adjusted_phenotypes(codes, probes, references.age_sex, cfg.n_bootstrap,
                                   rng(seed, "eval", "bootstrap", row.model))
    for name, result in adjusted.items():
        row.probe[name].update(
            age_sex_value=result.age_sex, adjusted_value=result.adjusted,
            raw_adjusted_value=references.raw_adjusted[name].adjusted, increment=result.increment,
            increment_ci=None if result.increment_ci is None else list(result.increment_ci))
    fit = probes.fit
    split_factors = ({n: (m, v[fit]) for n, (m, v) in probes.factors.items()},
                     {n: (m, v[~fit]) for n, (m, v) in probes.factors.items()})
    for name, best in single_concepts_heldout(codes[fit], split_factors[0], codes[~fit], split_factors[1]).items():
        row.single_concept[name] = {"concept": best.concept, "abs_r": best.abs_r}


def _score(row: LeaderboardRow, model: ConceptModel, data: EvalData, cfg: EvalSection, references: References,
           seed: int) -> np.ndarray:
    """Fill every metric of `row` for one model's codes; returns bool[K] its live atoms (fired on a test window)."""
    streamed = stream_metrics(model.encode, model.decode, model.d_dict, data.emb.z, data.emb.z_aug,
                              data.rows, data.pairs, data.train_mean, cfg.chunk_rows,
                              z_aug_heldout=data.z_aug_heldout)
    _fill_streamed(row, streamed)
    _fill_probes(row, model.encode(data.probe_z), data, cfg, references, seed)
    return streamed.live


def _matched_row(info: ModelInfo, k_active: int | None) -> LeaderboardRow | None:
    """The matched-sparsity row of a dense baseline, or None (logged) when there is no genuine one:
    no main ST-SAE to take k from, or at most k components (top-k would be the dense code)."""
    if k_active is None:
        log.warning("no main ST-SAE model: %s has no matched-sparsity row", info.name)
        return None
    if info.d_dict <= k_active:
        log.info("%s has no matched-sparsity row: %d components <= k = %d, so its top-k code is the "
                 "dense code", info.name, info.d_dict, k_active)
        return None
    return _identity(info, matched_sparsity=True, k_active=k_active)


def _identity(info: ModelInfo, *, matched_sparsity: bool = False, k_active: int | None = None,
              is_main: bool = False) -> LeaderboardRow:
    """A row naming the model, every metric None (to be filled or given a reason)."""
    return LeaderboardRow(model=info.name, family=info.family, variant=info.variant, d_dict=info.d_dict,
                          seed=info.seed, matched_sparsity=matched_sparsity, k_active=k_active, is_main=is_main)


def _train_config(main: ModelInfo) -> TrainSection:
    return TrainSection.model_validate(_sidecar(main).get("train_config") or {})


def _live_dictionary(model: ConceptModel, data: EvalData) -> np.ndarray:
    """The atoms of `model` that fire on at least one evaluated test window: float32[K_live, 512]."""
    live = np.zeros(model.d_dict, dtype=bool)
    for start in range(0, len(data.rows), model.batch_size):
        chunk = data.rows[start:start + model.batch_size]
        live |= (model.encode(np.asarray(data.emb.z[chunk], dtype=np.float32)) != 0).any(axis=0)
    return model.dictionary[live]


def subsample_dictionaries(data: EvalData, main: ModelInfo, cfg: EvalSection, seed: int,
                           device: torch.device = CPU) -> list[np.ndarray]:
    """Live atoms of `main`'s configuration refit on `cfg.stability_subsamples` 50 % patient subsamples of
    the train split, each with the main model's own step budget unless eval.stability_steps says otherwise.
    The refits train together as one fused group (each on its own subsample, as it would alone)."""
    from stsae.train.trainer import Member, fit_group

    emb, train_cfg = data.emb, _train_config(main)
    steps = cfg.stability_steps or _sidecar(main).get("steps") or train_cfg.steps
    split = emb.index["split"].to_numpy()
    train_patients = np.unique(emb.index["patient_id"].to_numpy()[split == "train"])
    members = []
    for i in range(cfg.stability_subsamples):
        chosen = rng(seed, "eval", "subsample", i).choice(
            train_patients, max(1, len(train_patients) // 2), replace=False)
        index = emb.index.assign(split=np.where(
            (split == "train") & emb.index["patient_id"].isin(chosen).to_numpy(), "train", "excluded"))
        members.append(Member(main.variant, derive_seed(seed, "eval", "subsample", i),
                              WindowTripletDataset(emb.z, emb.z_aug, index, split="train")))
    if not members:
        return []
    fitted = fit_group(members, train_cfg, main.d_dict, steps=steps, device=device)
    log.info("stability refits: %d trained together (%d steps)", len(members), steps)
    return [_live_dictionary(StsaeConceptModel(model, main, device=device), data) for model, _ in fitted]


def untrained_dictionaries(emb: Embeddings, main: ModelInfo, d_dict: int, seed: int) -> list[np.ndarray]:
    """Two dictionaries of size d_dict initialised by the trainer's own code, never trained.

    `Trainer.__init__` follows `train.init` of the model's sidecar (random directions or data rows) with
    different seeds: the data-aware null of seed stability."""
    from stsae.train.trainer import Trainer

    dataset = WindowTripletDataset(emb.z, emb.z_aug, emb.index, split="train")
    out = []
    for i in range(2):
        trainer = Trainer(dataset, None, _train_config(main), main.variant, d_dict,
                          derive_seed(seed, "eval", "null", d_dict, i), steps=0)
        w_dec = trainer.model.W_dec.detach().float().cpu().numpy()
        out.append(w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True))
    return out


def _summary(result: StabilityResult) -> dict[str, float]:
    return {"mean_cos": result.mean_cos, "frac_07": result.frac_07, "frac_09": result.frac_09}


class StabilityNulls:
    """Per-K nulls, built once per K: untrained data-initialised dictionaries (the row's data null),
    Gaussian draws with the train covariance, isotropic random unit vectors and the analytical value."""

    def __init__(self, emb: Embeddings, main: ModelInfo | None, seed: int):
        self.emb, self.main, self.seed = emb, main, seed
        self.untrained: dict[int, list[np.ndarray]] = {}
        self.summary: dict[str, Any] = {}
        train = emb.rows("train")
        sample = np.sort(rng(seed, "eval", "covariance").choice(train, min(len(train), COVARIANCE_MAX_ROWS),
                                                                replace=False))
        self.covariance = np.cov(np.asarray(read_rows(emb.z, sample), dtype=np.float64), rowvar=False)

    def for_row(self, d_dict: int, sizes: tuple[int, int]) -> tuple[StabilityResult | None, StabilityResult]:
        """(data-init null or None without a main model to take the training config from, isotropic null)
        for live-atom counts `sizes` at dictionary size d_dict."""
        gen = rng(self.seed, "eval", "null", d_dict, *sizes)
        a, b = (gen.standard_normal((n, EMBEDDING_DIM)) for n in sizes)
        isotropic = stability_against(a, [b])
        if self.main is None:
            return None, isotropic
        if d_dict not in self.untrained:
            self.untrained[d_dict] = untrained_dictionaries(self.emb, self.main, d_dict, self.seed)
            self._summarise(d_dict)
        first, second = self.untrained[d_dict]
        picked = [d[np.sort(gen.choice(d_dict, n, replace=False))] for d, n in zip((first, second), sizes,
                                                                                  strict=True)]
        return stability_against(picked[0], [picked[1]]), isotropic

    def _summarise(self, d_dict: int) -> None:
        first, second = self.untrained[d_dict]
        gen = rng(self.seed, "eval", "null-summary", d_dict)
        self.summary[str(d_dict)] = {
            "data_init": _summary(stability_against(first, [second])),
            "gaussian_train_covariance": _summary(covariance_null(self.covariance, (d_dict, d_dict), gen)),
            "isotropic": _summary(random_null(d_dict, EMBEDDING_DIM, gen)),
            "analytical_isotropic_mean_cos": analytical_null_mean_cos(d_dict, EMBEDDING_DIM)}


def _stability(rows: list[LeaderboardRow], live: dict[str, np.ndarray], infos: list[ModelInfo],
               main: ModelInfo | None, refits: list[np.ndarray], nulls: StabilityNulls) -> None:
    """Fill the stability columns of every ST-SAE row (live atoms only, see the module docstring)."""
    by_name = {info.name: info for info in infos}
    for row in rows:
        info = by_name[row.model]
        if row.matched_sparsity or info.family != "stsae":
            row.skip((*SEED_KEYS, *SUBSAMPLE_KEYS, *NULL_KEYS),
                     "baselines are fit once per configuration (no seeds to compare)")
            continue
        reference = live[info.name]
        row.stability_live_atoms = len(reference)
        seeds = [live[o.name] for o in infos if o.family == "stsae" and o.name != info.name
                 and (o.variant, o.d_dict) == (info.variant, info.d_dict) and len(live[o.name])]
        subsamples = [d for d in refits if len(d)] if info is main else []
        for keys, others, reason in (
                (SEED_KEYS, seeds, f"only one model of variant {info.variant} at K={info.d_dict}"),
                (SUBSAMPLE_KEYS, subsamples, "patient-subsample refits exist for the main model only")):
            if not others or not len(reference):
                row.skip(keys, reason if len(reference) else "no live atom")
                continue
            result = stability_against(reference, others)
            row.assign(keys, (result.mean_cos, result.frac_07, result.frac_09))
        partner = (seeds or subsamples or [None])[0]
        if partner is None or not len(reference):
            row.skip(NULL_KEYS[1:], "no stability comparison to give a null for")
            continue
        data_null, isotropic = nulls.for_row(info.d_dict, (len(reference), len(partner)))
        row.stability_null_isotropic_mean_cos = isotropic.mean_cos
        if data_null is None:
            row.skip(NULL_KEYS[1:3], "no main model to take the training configuration from")
        else:
            row.stability_null_data_mean_cos = data_null.mean_cos
            row.stability_null_data_frac_07 = data_null.frac_07


def _references(data: EvalData, cfg: EvalSection, seed: int) -> References:
    age_sex = age_sex_scores(data.probes)
    missing = sorted(set(PHENOTYPES) & data.probes.factors.keys() - age_sex.keys())
    if missing:
        log.info("no age+sex-adjusted probe for %s (age, sex or one class missing on a side)", missing)
    return References(probe_heldout(data.probe_z, data.probes), age_sex, adjusted_phenotypes(
        data.probe_z, data.probes, age_sex, cfg.n_bootstrap, rng(seed, "eval", "bootstrap", "raw")))


def _score_model(info: ModelInfo, main: ModelInfo | None, k_active: int | None, data: EvalData, cfg: EvalSection,
                 references: References, seed: int, device: torch.device) -> tuple[list[LeaderboardRow], np.ndarray]:
    """The leaderboard rows of one model (its own and, for a dense baseline given the main model's k, its
    matched-sparsity row) and its live atoms."""
    model = load_concept_model(info.path, batch_size=cfg.chunk_rows, device=device)
    matched = _matched_row(info, k_active) if info.family != "stsae" else None
    if matched is not None and isinstance(model, BaselineConceptModel):
        model.baseline.remember_dense_codes(DENSE_CODES_MEMO_BYTES)  # the k-sparse pass reads the same rows
    row = _identity(info, is_main=info is main)
    live = model.dictionary[_score(row, model, data, cfg, references, seed)]
    _fill_dead_train(row, info)
    rows = [row]
    if matched is not None and k_active is not None:
        _score(matched, k_sparse_view(model, k_active), data, cfg, references, seed)
        _fill_dead_train(matched, info)
        rows.append(matched)
    log.info("scored %s: EV %.3f, L0 %.1f", info.name, row.ev, row.l0)
    return rows, live


def _score_all(infos: list[ModelInfo], main: ModelInfo | None, data: EvalData, cfg: EvalSection,
               references: References, seed: int, pool: ThreadPoolExecutor, device: torch.device = CPU
               ) -> tuple[list[LeaderboardRow], dict[str, np.ndarray], int | None]:
    """Score every model: the main one first, here (its L0 is the k of the matched-sparsity rows), then
    the others on `pool`'s threads. Each model's numbers depend on nothing else scored, so the rows (in
    one fixed order) are those of scoring one by one; returns the rows, each model's live atoms and k."""
    ordered = sorted(infos, key=lambda info: (info is not main, info.family != "stsae", info.name))
    head = ordered[:1] if main is not None else []
    scored = [_score_model(info, main, None, data, cfg, references, seed, device) for info in head]
    main_l0 = scored[0][0][0].l0 if scored else None
    k_active = None if main_l0 is None else max(1, round(main_l0))
    pending = [pool.submit(_score_model, info, main, k_active, data, cfg, references, seed, device)
               for info in ordered[len(head):]]
    scored += [future.result() for future in pending]
    rows = [row for model_rows, _ in scored for row in model_rows]
    live = {info.name: atoms for info, (_, atoms) in zip(ordered, scored, strict=True)}
    return rows, live, k_active


# Threads sharing the stability refits and the scoring of every model but the main one (see `run`).
SCORING_THREADS = 2

CONTRACT = StageContract(
    name="evaluate", help="Score every model on the test split; write leaderboard and Pareto front.",
    reads=("run.seed", "eval", "train.d_dict", "train.seeds", "baselines.methods", "baselines.n_components"),
    upstream=("train", "baselines"), out_dir="eval")


def run(ctx: StageContext) -> None:
    cfg, seed = ctx.config.eval, ctx.config.run.seed
    infos = list_models(ctx.run_dir, ctx.config.baselines)
    if not infos:
        raise StsaeError(
            f"{ctx.run_dir.models_dir}: no complete models (run `stsae train` / `stsae baselines`)")
    emb = load_embeddings(ctx.run_dir)
    data, meta = _prepare(ctx, emb, cfg, seed)
    references = _references(data, cfg, seed)
    main = main_stsae(infos, ctx.config.train)
    device = resolve_device(cfg.device, "eval.device")  # ST-SAE encode/decode; metrics and probes: numpy
    # The refits (torch training) and the scoring of every model but the main one (numpy/LAPACK and torch
    # encodes) share two threads, torch and BLAS each given half the cores so the two do not oversubscribe
    # the machine: both release the GIL in their kernels, and once the refits end their thread scores too
    # (on the demo's 2 cores a core sat idle for the last ~10 s of scoring). Results depend on neither.
    half = max(1, (os.cpu_count() or 2) // 2)
    with ThreadPoolExecutor(SCORING_THREADS, thread_name_prefix="evaluate") as pool, limited_threads(half):
        refits = (pool.submit(subsample_dictionaries, data, main, cfg, seed, device)
                  if main is not None and cfg.stability_subsamples > 0 else None)
        rows, live, k_active = _score_all(infos, main, data, cfg, references, seed, pool, device)
        nulls = StabilityNulls(emb, main, seed)
        _stability(rows, live, infos, main, [] if refits is None else refits.result(), nulls)
    age_sex = {name: result.age_sex for name, result in references.raw_adjusted.items()}
    lb.write_leaderboard(ctx.run_dir.leaderboard, rows, {
        "main_model": None if main is None else main.name, "stability_null": nulls.summary,
        "lag1_within_record_reference_hr": reference_hr_lag1(meta, data), "phenotype_age_sex_auroc": age_sex})
    io.write_json(ctx.run_dir.pareto, lb.pareto_payload(rows))
    log.info("\n%s", lb.render_table(rows))
    ctx.record("devices", {"evaluate": device_facts(device)})
    ctx.record("evaluate", {"n_eval_rows": len(data.rows), "n_pairs": len(data.pairs),
                            "k_active": k_active, "n_models": len(infos)})
