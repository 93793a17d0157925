"""`evaluate` stage: score every ST-SAE and baseline on the held-out test split.

Writes eval/leaderboard.json (one row per model, plus one matched-sparsity row per dense baseline:
its top-k components per window with k = the L0 of the main ST-SAE `full` model) and eval/pareto.json
(front over ST-SAE and matched-sparsity rows), and logs the table. See docs/CONTRACTS.md.

The main ST-SAE dictionary size is the K most checkpoints share (the ablation grid lives there); its
`full` seeds, plus `eval.stability_subsamples` refits on 50 % patient subsamples of the train split,
give the seed-stability numbers of that group.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stsae.config import EvalSection, TrainSection
from stsae.data.dataset import WindowTripletDataset, temporal_pairs
from stsae.data.store import EMBEDDING_DIM, Embeddings, load_embeddings
from stsae.errors import InputDataError, StsaeError
from stsae.eval import leaderboard as lb
from stsae.eval.metrics import stream_metrics, streamed_mean, top_k_codes
from stsae.eval.probe import ProbeScore, available_factors, probe_all, single_concept_recovery
from stsae.eval.stability import analytical_null_mean_cos, random_null, stability_against
from stsae.models.registry import ConceptModel, ModelInfo, list_models, load_concept_model
from stsae.pipeline.runner import StageContext
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
    probe_rows: np.ndarray  # int64[n] sorted subset of rows (whole patients)
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
    probe_rows = whole_patient_subset(rows, patients[rows], cfg.probe_max_rows, rng(seed, "eval", "probe"))
    meta = io.read_parquet(ctx.run_dir.meta).set_index("window_id")
    window_ids = emb.index["window_id"].to_numpy()[probe_rows]
    unknown = np.setdiff1d(window_ids, meta.index.to_numpy())
    if unknown.size:
        raise InputDataError(f"{ctx.run_dir.meta}: window_id {unknown[0]} of the embeddings index is missing")
    factors = available_factors(meta.loc[window_ids].reset_index())
    log.info("evaluating %d test windows (%d temporal pairs); probes on %d windows for %s",
             len(rows), len(pairs), len(probe_rows), sorted(factors))
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


def _score(row: dict[str, Any], encode: Callable[[np.ndarray], np.ndarray], model: ConceptModel,
           data: EvalData, cfg: EvalSection, raw_probe: dict[str, ProbeScore]) -> None:
    """Fill the streamed metrics, probes and single-concept recovery of one row."""
    m = stream_metrics(encode, model.decode, model.d_dict, data.emb.z, data.emb.z_aug, data.rows,
                       data.pairs, data.train_mean, cfg.chunk_rows)
    row.update(ev=m.ev, l0=m.l0, dead_fraction=m.dead_fraction, consistency_jaccard=m.consistency_jaccard,
               consistency_cosine=m.consistency_cosine, lag1_autocorr=m.lag1.value)
    if m.lag1.reason:
        row[lb.REASONS_KEY]["lag1_autocorr"] = m.lag1.reason
    codes = encode(np.asarray(data.emb.z[data.probe_rows], dtype=np.float32))
    for name, score in probe_all(codes, data.factors, data.groups, cfg.probe_folds).items():
        row["probe"][name] = {"metric": score.metric, "value": score.value,
                              "raw_value": raw_probe[name].value}
        if score.reason:
            row[lb.REASONS_KEY][f"probe.{name}"] = score.reason
    for name, (_, values) in data.factors.items():
        best = single_concept_recovery(codes, values)
        row["single_concept"][name] = {"concept": best.concept, "abs_r": best.abs_r}


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


def run(ctx: StageContext) -> None:
    cfg, seed = ctx.config.eval, ctx.config.run.seed
    infos = list_models(ctx.run_dir)
    if not infos:
        raise StsaeError(
            f"{ctx.run_dir.models_dir}: no complete models (run `stsae train` / `stsae baselines`)")
    emb = load_embeddings(ctx.run_dir)
    data = _prepare(ctx, emb, cfg, seed)
    raw = np.asarray(emb.z[data.probe_rows], dtype=np.float32)
    raw_probe = probe_all(raw, data.factors, data.groups, cfg.probe_folds)
    main = main_stsae(infos)
    ordered = sorted(infos, key=lambda info: (info is not main, info.family != "stsae", info.name))
    rows: list[dict[str, Any]] = []
    dictionaries: dict[str, np.ndarray] = {}
    k_active: int | None = None
    for info in ordered:
        model = load_concept_model(info.path, batch_size=cfg.chunk_rows)
        dictionaries[info.name] = model.dictionary
        row = lb.new_row(info.name, info.family, info.variant, info.d_dict, info.seed)
        _score(row, model.encode, model, data, cfg, raw_probe)
        rows.append(row)
        log.info("scored %s: EV %.3f, L0 %.1f", info.name, row["ev"], row["l0"])
        if info is main:
            k_active = max(1, round(row["l0"]))
        if info.family != "stsae":
            if k_active is None:
                log.warning("no ST-SAE full model: %s has no matched-sparsity row", info.name)
                continue
            k = k_active
            matched = lb.new_row(info.name, info.family, info.variant, info.d_dict, info.seed, True, k)
            _score(matched, lambda z, m=model, k=k: top_k_codes(m.encode(z), k), model, data, cfg, raw_probe)
            rows.append(matched)
    refits: list[np.ndarray] = []
    if main is not None and cfg.stability_subsamples > 0:
        refits = subsample_dictionaries(emb, main, cfg, seed)
    nulls = _stability(rows, dictionaries, infos, main, refits, seed)
    lb.write_leaderboard(ctx.run_dir.leaderboard, rows, {"stability_null": nulls})
    io.write_json(ctx.run_dir.pareto, lb.pareto_payload(rows))
    log.info("\n%s", lb.render_table(rows))
    ctx.record("evaluate", {"n_eval_rows": len(data.rows), "n_pairs": len(data.pairs),
                            "k_active": k_active, "n_models": len(infos)})

