"""`evaluate` stage: score every ST-SAE and baseline on the held-out test split.

Writes eval/leaderboard.json (one row per model, plus one matched-sparsity row per dense baseline with
more than k components: k-sparse codes re-encoded on its own dictionary (`encode_k_sparse`) with k = the
L0 of the main ST-SAE `full` model; a baseline of at most k components has no such row)
and eval/pareto.json (front over ST-SAE and matched-sparsity rows), and logs the table. See
docs/CONTRACTS.md.

Reconstruction, sparsity, consistency and lag-1 are measured on the test split. The linear probes
measure what is linearly decodable from a representation, so they use whole patients from every
split (subsampled to `eval.probe_max_rows` rows by whole patients, seeded): the ST-SAE never saw the
val/test windows, the probe's own patient-grouped cross-validation keeps its test patients unseen,
and 30 test patients are too few for a grouped CV of a 1024-feature probe.

The main ST-SAE dictionary size is the K most checkpoints share (the ablation grid lives there); its
`full` seeds, plus `eval.stability_subsamples` refits on 50 % patient subsamples of the train split,
give the seed-stability numbers of that group.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from stsae.config import EvalSection, TrainSection
from stsae.data.dataset import WindowTripletDataset, temporal_pairs
from stsae.data.store import EMBEDDING_DIM, Embeddings, load_embeddings
from stsae.errors import InputDataError, StsaeError
from stsae.eval import leaderboard as lb
from stsae.eval.metrics import stream_metrics, streamed_mean, top_k_codes
from stsae.eval.probe import ProbeScore, available_factors, probe_all, single_concepts
from stsae.eval.stability import analytical_null_mean_cos, random_null, stability_against
from stsae.models.registry import ConceptModel, ModelInfo, list_models, load_concept_model, load_k_sparse_model
from stsae.pipeline.contract import StageContext, StageContract
from stsae.utils import io
from stsae.utils.seeding import derive_seed, rng

log = logging.getLogger(__name__)

STABILITY_KEYS = ("stability_mean_cos", "stability_frac_07", "stability_frac_09", "stability_null_mean_cos")


@dataclass
class EvalData:
    """Everything shared by all models: z memmaps, the test rows and the probe subset."""

    emb: Embeddings
    train_mean: np.ndarray  # float32[512]
    rows: np.ndarray  # int64[N] sorted test rows evaluated
    pairs: np.ndarray  # int64[P, 2] temporal pairs within `rows`
    probe_rows: np.ndarray  # int64[n] sorted rows of any split (whole patients)
    groups: np.ndarray  # patient_id of each probe row
    factors: dict[str, tuple[str, np.ndarray]]  # factor -> (metric, values at probe rows)


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


def _prepare(ctx: StageContext, emb: Embeddings, cfg: EvalSection, seed: int) -> EvalData:
    train_rows, test_rows = emb.rows("train"), emb.rows("test")
    for split, rows in (("train", train_rows), ("test", test_rows)):
        if len(rows) == 0:
            raise InputDataError(f"{ctx.run_dir.index}: no rows with split == '{split}'")
    patients = emb.index["patient_id"].to_numpy()
    rows = whole_patient_subset(test_rows, patients[test_rows], cfg.max_eval_rows, rng(seed, "eval", "rows"))
    pairs = temporal_pairs(emb.index)
    pairs = pairs[np.isin(pairs[:, 0], rows) & np.isin(pairs[:, 1], rows)]
    probe_rows = whole_patient_subset(np.arange(len(patients)), patients, cfg.probe_max_rows,
                                      rng(seed, "eval", "probe"))
    meta = io.read_parquet(ctx.run_dir.meta).set_index("window_id")
    window_ids = emb.index["window_id"].to_numpy()[probe_rows]
    unknown = np.setdiff1d(window_ids, meta.index.to_numpy())
    if unknown.size:
        raise InputDataError(f"{ctx.run_dir.meta}: window_id {unknown[0]} of the embeddings index is missing")
    factors = available_factors(meta.loc[window_ids].reset_index())
    log.info("evaluating %d test windows (%d temporal pairs); probes on %d windows of %d patients "
             "(all splits) for %s", len(rows), len(pairs), len(probe_rows),
             len(np.unique(patients[probe_rows])), sorted(factors))
    return EvalData(emb, streamed_mean(emb.z, train_rows), rows, pairs, probe_rows,
                    patients[probe_rows], factors)


def main_stsae(infos: list[ModelInfo]) -> ModelInfo | None:
    """The `full` model (lowest seed) at the K most ST-SAE checkpoints share; None without ST-SAEs."""
    stsae = [info for info in infos if info.family == "stsae"]
    if not stsae:
        return None
    counts = Counter(info.d_dict for info in stsae)
    full = [info for info in stsae if info.variant == "full"]
    if not full:
        return None
    return min(full, key=lambda info: (-counts[info.d_dict], info.d_dict, info.seed))


def _score(views: list[tuple[dict[str, Any], int | None]], model: ConceptModel, data: EvalData,
           cfg: EvalSection, raw_probe: dict[str, ProbeScore]) -> None:
    """Fill the streamed metrics, probes and single-concept recovery of each (row, top-k) view of one
    model (k None: the codes as encoded). The model encodes every window once for all views."""
    streamed = stream_metrics(model.encode, model.decode, model.d_dict, data.emb.z, data.emb.z_aug,
                              data.rows, data.pairs, data.train_mean, cfg.chunk_rows,
                              top_ks=tuple(k for _, k in views))
    dense = model.encode(np.asarray(data.emb.z[data.probe_rows], dtype=np.float32))
    for (row, k), m in zip(views, streamed, strict=True):
        row.update(ev=m.ev, l0=m.l0, dead_fraction=m.dead_fraction, consistency_jaccard=m.consistency_jaccard,
                   consistency_cosine=m.consistency_cosine, lag1_autocorr=m.lag1.value,
                   lag1_autocorr_unweighted=m.lag1.unweighted)
        if m.lag1.reason:
            lb.skip(row, ("lag1_autocorr", "lag1_autocorr_unweighted"), m.lag1.reason)
        codes = top_k_codes(dense, k)
        for name, score in probe_all(codes, data.factors, data.groups, cfg.probe_folds).items():
            row["probe"][name] = {"metric": score.metric, "value": score.value,
                                  "raw_value": raw_probe[name].value}
            if score.reason:
                row[lb.REASONS_KEY][f"probe.{name}"] = score.reason
        for name, best in single_concepts(codes, data.factors).items():
            row["single_concept"][name] = {"concept": best.concept, "abs_r": best.abs_r}


def _matched_row(info: ModelInfo, k_active: int | None) -> dict[str, Any] | None:
    """The matched-sparsity row of a dense baseline, or None (logged) when there is no genuine one:
    no ST-SAE `full` model to take k from, or at most k components (top-k would be the dense code)."""
    if k_active is None:
        log.warning("no ST-SAE full model: %s has no matched-sparsity row", info.name)
        return None
    if info.d_dict <= k_active:
        log.info("%s has no matched-sparsity row: %d components <= k = %d, so its top-k code is the "
                 "dense code", info.name, info.d_dict, k_active)
        return None
    return lb.new_row(info.name, info.family, info.variant, info.d_dict, info.seed, True, k_active)


def _sidecar(info: ModelInfo) -> dict[str, Any]:
    return json.loads(info.path.with_suffix(".json").read_text())


def subsample_dictionaries(emb: Embeddings, main: ModelInfo, cfg: EvalSection, seed: int) -> list[np.ndarray]:
    """Decoders of `main`'s configuration refit on `cfg.stability_subsamples` 50 % patient subsamples of
    the train split, `cfg.stability_steps` steps each (train config from the checkpoint's sidecar)."""
    from stsae.train.trainer import fit_stsae

    train_cfg = TrainSection.model_validate(_sidecar(main).get("train_config") or {})
    split = emb.index["split"].to_numpy()
    train_patients = np.unique(emb.index["patient_id"].to_numpy()[split == "train"])
    dictionaries = []
    for i in range(cfg.stability_subsamples):
        chosen = rng(seed, "eval", "subsample", i).choice(
            train_patients, max(1, len(train_patients) // 2), replace=False)
        index = emb.index.assign(split=np.where(
            (split == "train") & emb.index["patient_id"].isin(chosen).to_numpy(), "train", "excluded"))
        dataset = WindowTripletDataset(emb.z, emb.z_aug, index, split="train")
        model, _ = fit_stsae(dataset, None, train_cfg, main.variant, main.d_dict,
                             derive_seed(seed, "eval", "subsample", i), steps=cfg.stability_steps)
        w_dec = model.W_dec.detach().float().cpu().numpy()
        dictionaries.append(w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True))
        log.info("stability refit %d/%d done", i + 1, cfg.stability_subsamples)
    return dictionaries


def _stability(rows: list[dict[str, Any]], dictionaries: dict[str, np.ndarray], infos: list[ModelInfo],
               main: ModelInfo | None, refits: list[np.ndarray], seed: int) -> dict[str, Any]:
    """Fill the stability columns; returns the per-K null summary (empirical and analytical)."""
    by_name = {info.name: info for info in infos}
    nulls: dict[str, Any] = {}
    for row in rows:
        info = by_name[row["model"]]
        if row["matched_sparsity"] or info.family != "stsae":
            lb.skip(row, STABILITY_KEYS, "baselines are fit once per configuration (no seeds to compare)")
            continue
        others = [dictionaries[o.name] for o in infos if o.family == "stsae" and o.name != info.name
                  and (o.variant, o.d_dict) == (info.variant, info.d_dict)]
        if main is not None and (info.variant, info.d_dict) == (main.variant, main.d_dict):
            others += refits
        if not others:
            lb.skip(row, STABILITY_KEYS, f"only one model of variant {info.variant} at K={info.d_dict}")
            continue
        result = stability_against(dictionaries[info.name], others)
        key = str(info.d_dict)
        if key not in nulls:
            null = random_null(info.d_dict, EMBEDDING_DIM, rng(seed, "eval", "null", info.d_dict))
            nulls[key] = {"mean_cos": null.mean_cos, "frac_07": null.frac_07, "frac_09": null.frac_09,
                          "analytical_mean_cos": analytical_null_mean_cos(info.d_dict, EMBEDDING_DIM)}
        row.update(stability_mean_cos=result.mean_cos, stability_frac_07=result.frac_07,
                   stability_frac_09=result.frac_09, stability_null_mean_cos=nulls[key]["mean_cos"])
    return nulls


def _score_all(infos: list[ModelInfo], main: ModelInfo | None, data: EvalData, cfg: EvalSection,
               raw_probe: dict[str, ProbeScore]) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], int | None]:
    """Score every model (main first: its L0 is the k of the matched-sparsity rows); returns the rows,
    each model's dictionary and k."""
    ordered = sorted(infos, key=lambda info: (info is not main, info.family != "stsae", info.name))
    rows: list[dict[str, Any]] = []
    dictionaries: dict[str, np.ndarray] = {}
    k_active: int | None = None
    for info in ordered:
        model = load_concept_model(info.path, batch_size=cfg.chunk_rows)
        dictionaries[info.name] = model.dictionary
        row = lb.new_row(info.name, info.family, info.variant, info.d_dict, info.seed)
        _score([(row, None)], model, data, cfg, raw_probe)
        rows.append(row)
        matched = _matched_row(info, k_active) if info.family != "stsae" else None
        if matched is not None and k_active is not None:
            k_sparse = load_k_sparse_model(info.path, k_active, batch_size=cfg.chunk_rows)
            _score([(matched, None)], k_sparse, data, cfg, raw_probe)
            rows.append(matched)
        log.info("scored %s: EV %.3f, L0 %.1f", info.name, row["ev"], row["l0"])
        if info is main:
            k_active = max(1, round(row["l0"]))
    return rows, dictionaries, k_active


CONTRACT = StageContract(
    name="evaluate", help="Score every model on the test split; write leaderboard and Pareto front.",
    reads=("run.seed", "eval", "baselines.methods", "baselines.n_components"), upstream=("train", "baselines"),
    out_dir="eval")


def run(ctx: StageContext) -> None:
    cfg, seed = ctx.config.eval, ctx.config.run.seed
    infos = list_models(ctx.run_dir, ctx.config.baselines)
    if not infos:
        raise StsaeError(
            f"{ctx.run_dir.models_dir}: no complete models (run `stsae train` / `stsae baselines`)")
    emb = load_embeddings(ctx.run_dir)
    data = _prepare(ctx, emb, cfg, seed)
    raw = np.asarray(emb.z[data.probe_rows], dtype=np.float32)
    raw_probe = probe_all(raw, data.factors, data.groups, cfg.probe_folds)
    main = main_stsae(infos)
    # The refits are torch training (GIL released in its kernels): they run beside the scoring, which
    # is numpy/LAPACK limited to half the cores so the two do not oversubscribe the machine (on 2 cores
    # that cut the demo's evaluate time by a fifth). Results do not depend on either.
    blas_threads = max(1, (os.cpu_count() or 2) // 2)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stability-refits") as pool, \
            threadpool_limits(limits=blas_threads, user_api="blas"):
        refits = (pool.submit(subsample_dictionaries, emb, main, cfg, seed)
                  if main is not None and cfg.stability_subsamples > 0 else None)
        rows, dictionaries, k_active = _score_all(infos, main, data, cfg, raw_probe)
        nulls = _stability(rows, dictionaries, infos, main, [] if refits is None else refits.result(), seed)
    lb.write_leaderboard(ctx.run_dir.leaderboard, rows, {"stability_null": nulls})
    io.write_json(ctx.run_dir.pareto, lb.pareto_payload(rows))
    log.info("\n%s", lb.render_table(rows))
    ctx.record("evaluate", {"n_eval_rows": len(data.rows), "n_pairs": len(data.pairs),
                            "k_active": k_active, "n_models": len(infos)})

