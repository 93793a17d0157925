"""The concept dashboard's data: one compact JSON object the report's plain JS renders cards from.

SAE practice (SAE-Vis, SAEDashboard) inspects features through one card per feature: top and
per-quantile examples, an activation-density histogram and the feature's effect on outputs. Clinical
windows must not leave the machine, so everything lives inside report.html, kept small: waveforms are
decimated to 25 Hz and stored as base64 int8 with a scale, floats are rounded to 4 significant digits,
and the example pool is capped (`MAX_POOL_WINDOWS`) so the report stays well under 15 MB.

Inputs (docs/CONTRACTS.md): the main model (`stsae.train.grid.main_entry`), embeddings (all windows are
encoded; reliability uses the test split), windows.npy + meta.parquet, aging/age_model.json, grounding
outputs and the other seeds' `full` models. Anything missing shows as "n/a (reason)" on the cards; a
missing main model or embeddings make the whole dashboard "not available" with the reason.
Patient ids are shown as keyed hashes, never in clear; the key is a digest of the main model's weights,
which stay on the machine: the same run gives the same report byte for byte (tests/test_determinism.py),
and someone holding only the report cannot test guessed ids against it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stsae.aging.age_pred import age_predictor_from_record
from stsae.config import Config
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError, StsaeError
from stsae.grounding.beats import average_pulse, beat_onsets
from stsae.grounding.concepts import correlate_concepts_with_morphology
from stsae.models.registry import ConceptModel, load_concept_model
from stsae.report import concept_stats as stats
from stsae.report.figures import read_concept_correlations, read_concept_pulses
from stsae.report.scorecard import read_optional_json, read_optional_parquet
from stsae.rundir import RunDir
from stsae.train.grid import main_entry
from stsae.utils import io
from stsae.utils.seeding import rng

log = logging.getLogger(__name__)

DECIMATE = 5  # 125 Hz -> 25 Hz: enough for the eye, a fifth of the bytes
MAX_CODE_CELLS = 50_000_000  # windows × concepts encoded (200 MB of float32 codes)
MAX_POOL_WINDOWS = 6000  # at ~0.7 kB each (waveform, onsets, active codes), ≤ 4.2 MB whatever K and N are
TOP_WINDOWS = 6
TOP_PER_PATIENT = 2
QUANTILES = 4
PER_QUANTILE = 5
HIST_BINS = 24
MIX_TOP = 50  # windows whose age / sex / source mix a card shows
PULSE_WINDOWS = 12  # windows averaged per decile when the grounding stage did not cover a concept
AGE_BINS = (0, 30, 40, 50, 60, 70, 80, 200)


def _round(value: Any, digits: int = 4) -> float | None:
    """A JSON-safe float with `digits` significant digits; None for NaN/inf/None."""
    if value is None:
        return None
    number = float(value)
    return float(f"{number:.{digits}g}") if np.isfinite(number) else None


def quantise(values: np.ndarray) -> dict[str, Any]:
    """float[L] -> {"s": scale, "b": base64 int8}: values ≈ int8 · s, error ≤ s/2; NaN stored as -128."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    peak = float(np.abs(values[finite]).max()) if finite.any() else 0.0
    scale = peak / 127 if peak > 0 else 1.0
    q = np.where(finite, np.clip(np.round(np.nan_to_num(values) / scale), -127, 127), -128).astype(np.int8)
    return {"s": float(f"{scale:.6g}"), "b": base64.b64encode(q.tobytes()).decode("ascii")}


@dataclass
class Cohort:
    """The encoded windows. codes: float32[M, K] (row r ↔ index row r); index: embeddings index joined
    with meta (age, sex, source, htn, t2d); rows: int64[M] their rows in z.npy (all n_all rows, or a patient
    sample: `patient_sample`); test: bool[M]; patients: one row per patient (sorted) with
    split, age, sex, htn, t2d; patient_codes: float64[P, K]; row_patient: int64[M] row into patients."""

    codes: np.ndarray
    index: pd.DataFrame
    rows: np.ndarray
    test: np.ndarray
    patients: pd.DataFrame
    patient_codes: np.ndarray
    row_patient: np.ndarray
    n_all: int


def _encode(model: ConceptModel, z: np.ndarray, rows: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """float32[len(rows), K] codes of z[rows] (sorted rows of a memmap, read chunk by chunk)."""
    return np.concatenate([model.encode(np.array(z[rows[s:s + chunk]], dtype=np.float32))
                           for s in range(0, len(rows), chunk)]).astype(np.float32)


def patient_sample(index: pd.DataFrame, n_concepts: int, generator: np.random.Generator) -> np.ndarray:
    """Sorted embedding rows to encode: all of them, or, when N·K exceeds MAX_CODE_CELLS, every window of
    a random sample of whole patients (so patient means and records stay intact) up to that many cells."""
    max_rows = MAX_CODE_CELLS // max(n_concepts, 1)
    if len(index) <= max_rows:
        return np.arange(len(index))
    ids, sizes = np.unique(index["patient_id"].to_numpy(), return_counts=True)
    order = generator.permutation(len(ids))
    keep = ids[order[np.cumsum(sizes[order]) <= max_rows]]
    return np.flatnonzero(index["patient_id"].isin(keep).to_numpy())


def _cohort(run_dir: RunDir, model: ConceptModel, seed: int) -> Cohort:
    embeddings = load_embeddings(run_dir)
    meta = io.read_parquet(run_dir.meta)
    wanted = [c for c in ("window_id", "age", "sex", "source", "htn", "t2d") if c in meta.columns]
    index = embeddings.index.merge(meta[wanted], on="window_id", how="left", validate="one_to_one")
    for column in ("age", "htn", "t2d"):
        if column not in index.columns:
            index[column] = np.nan
    for column in ("sex", "source"):
        if column not in index.columns:
            index[column] = None
    index["patient_id"] = index["patient_id"].astype(str)
    n_all = len(index)
    rows = patient_sample(index, model.info.d_dict, rng(seed, "report", "patients"))
    index = index.iloc[rows].reset_index(drop=True)
    codes = _encode(model, embeddings.z, rows)
    row_patient, ids = pd.factorize(index["patient_id"], sort=True)
    one_hot = sp.csr_matrix((np.ones(len(rows)), (row_patient, np.arange(len(rows)))), shape=(len(ids), len(rows)))
    patient_codes = np.asarray(one_hot @ codes, dtype=np.float64) / np.bincount(row_patient)[:, None]
    patients = (index.groupby("patient_id", sort=True)[["split", "age", "sex", "htn", "t2d"]].first()
                .reset_index())
    return Cohort(codes, index, rows, (index["split"] == "test").to_numpy(), patients, patient_codes,
                  row_patient.astype(np.int64), n_all)


def _patient_key(weights: Path) -> bytes:
    """32-byte BLAKE2s key for patient-id hashes: the digest of the model file (module docstring)."""
    with open(weights, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2s(person=b"stsae-pt")).digest()


def _main_model(run_dir: RunDir, config: Config) -> ConceptModel:
    entry = main_entry(config.train)
    return load_concept_model(run_dir.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed))


def _other_seed_dictionaries(run_dir: RunDir, config: Config) -> tuple[list[np.ndarray], str | None]:
    entry = main_entry(config.train)
    paths = [run_dir.stsae_checkpoint("full", entry.d_dict, s) for s in config.train.seeds if s != entry.seed]
    found = [load_concept_model(p).dictionary for p in paths if p.is_file() and p.with_suffix(".json").is_file()]
    if not found:
        return [], f"no other seed's full model at K={entry.d_dict}"
    return found, None


def _aug_codes(run_dir: RunDir, model: ConceptModel, cohort: Cohort) -> tuple[np.ndarray, str]:
    """Test-window codes of the held-out augmentations when extracted, else of z_aug; which one is said."""
    held_out = run_dir.embeddings_dir / "z_aug_heldout.npy"
    path, label = ((held_out, "held-out augmentations") if held_out.is_file()
                   else (run_dir.z_aug, "training augmentations"))
    z_aug = io.open_memmap_rows(path, 512)
    n_index = len(io.read_parquet(run_dir.index))
    if z_aug.shape[0] != n_index:
        raise InputDataError(f"{path}: {z_aug.shape[0]} rows but {run_dir.index.name} lists {n_index}")
    return _encode(model, z_aug, cohort.rows[cohort.test]), label


def _reliability(run_dir: RunDir, config: Config, model: ConceptModel,
                 cohort: Cohort) -> dict[str, dict[str, Any]]:
    """Per-concept arrays (or reasons) of lag-1, consistency and matched cosine (concept_stats)."""
    test = cohort.test
    out: dict[str, dict[str, Any]] = {}
    if test.sum() >= 3:
        idx = cohort.index[test]
        out["lag1"] = {"values": stats.within_record_lag1(
            cohort.codes[test], idx["record_id"].astype(str).to_numpy(), idx["segment_idx"].to_numpy(),
            rng(config.run.seed, "report", "lag1")), "note": "test split, within records"}
    else:
        out["lag1"] = {"reason": "fewer than 3 test windows"}
    if not test.any():
        out["consistency"] = {"reason": "no test windows"}
    else:
        codes_aug, label = _aug_codes(run_dir, model, cohort)
        out["consistency"] = {"values": stats.firing_jaccard(cohort.codes[test], codes_aug),
                              "null": stats.independent_jaccard((cohort.codes[test] > 0).mean(axis=0),
                                                                (codes_aug > 0).mean(axis=0)),
                              "note": f"Jaccard of firing, {label}, test split"}
    others, reason = _other_seed_dictionaries(run_dir, config)
    out["matched_cos"] = ({"reason": reason} if reason else
                          {"values": stats.matched_atom_cosines(model.dictionary, others),
                           "note": f"mean over {len(others)} other seed(s)"})
    return out


class WindowPool:
    """The example windows shown anywhere in the dashboard, each stored once (decimated, int8)."""

    def __init__(self, run_dir: RunDir, cohort: Cohort, key: bytes, fs: float):
        self.windows = io.open_memmap_rows(run_dir.windows)
        self.cohort, self.key, self.fs = cohort, key, fs
        self.entries: dict[int, dict[str, Any]] = {}

    def patient_hash(self, patient_id: str) -> str:
        """Keyed BLAKE2s, 40 bits: stable for this run, not reversible by hashing candidate ids."""
        return hashlib.blake2s(patient_id.encode(), key=self.key, digest_size=5).hexdigest()

    def add(self, row: int) -> int:
        """Store index row `row` (once); returns its window_id."""
        info = self.cohort.index.iloc[row]
        wid = int(info["window_id"])
        if wid not in self.entries:
            signal = np.asarray(self.windows[wid], dtype=np.float64)
            onsets = beat_onsets(signal, self.fs) if np.std(signal) > 0 else np.zeros(0, dtype=np.int64)
            active = np.flatnonzero(self.cohort.codes[row] > 0)
            self.entries[wid] = {
                "p": self.patient_hash(str(info["patient_id"])), "age": _round(info["age"], 3),
                "sex": None if pd.isna(info["sex"]) else str(info["sex"]),
                "src": None if pd.isna(info["source"]) else str(info["source"]), "split": str(info["split"]),
                "w": quantise(signal[::DECIMATE]), "on": [int(o) // DECIMATE for o in onsets],
                "act": [[int(c), _round(self.cohort.codes[row, c])] for c in active],
            }
        return wid


def _top_rows(activation: np.ndarray, patients: np.ndarray, n: int, per_patient: int) -> list[int]:
    """Rows of the n largest activations, at most `per_patient` per patient (a patient cannot fill a card)."""
    taken: dict[int, int] = {}
    rows = []
    for row in np.argsort(-activation, kind="stable"):
        if activation[row] <= 0 or len(rows) == n:
            break
        if taken.get(patients[row], 0) < per_patient:
            taken[patients[row]] = taken.get(patients[row], 0) + 1
            rows.append(int(row))
    return rows


def _quantile_rows(activation: np.ndarray, per_bin: int, generator: np.random.Generator) -> list[list[int]]:
    """`per_bin` random rows from each activation quantile bin of the active windows (lowest bin first)."""
    active = np.flatnonzero(activation > 0)
    ranked = active[np.argsort(activation[active], kind="stable")]
    bins = np.array_split(ranked, QUANTILES) if len(ranked) >= QUANTILES else [ranked]
    return [sorted(generator.choice(b, size=min(per_bin, len(b)), replace=False).tolist(),
                   key=lambda r: activation[r]) for b in bins]


def _histogram(activation: np.ndarray) -> dict[str, Any]:
    """Counts of log10 of the non-zero activations in HIST_BINS equal bins."""
    nonzero = activation[activation > 0]
    if len(nonzero) == 0:
        return {"lo": None, "hi": None, "counts": []}
    logs = np.log10(nonzero.astype(np.float64))
    lo, hi = float(logs.min()), float(logs.max())
    # one distinct value: a range wide enough for float64 to split into HIST_BINS bins (all in the first)
    counts, _ = np.histogram(logs, bins=HIST_BINS, range=(lo, hi if hi > lo else lo + 1.0))
    return {"lo": _round(lo), "hi": _round(hi), "counts": counts.tolist()}


def _mix(index: pd.DataFrame, rows: list[int]) -> dict[str, dict[str, int]]:
    """Counts of age bin, sex and source among the given rows ("unknown" for missing values)."""
    chosen = index.iloc[rows]
    labels = [f"{a}–{b}" if b < AGE_BINS[-1] else f"{a}+" for a, b in itertools.pairwise(AGE_BINS)]
    ages = pd.cut(chosen["age"], bins=list(AGE_BINS), right=False, labels=labels)
    mix = {name: series.astype(object).fillna("unknown").value_counts()
           for name, series in (("age", ages), ("sex", chosen["sex"]), ("source", chosen["source"]))}
    mix["age"] = mix["age"].reindex([*labels, "unknown"]).dropna()  # bins in age order, not by count
    return {name: {str(k): int(v) for k, v in counts.items()} for name, counts in mix.items()}


class PulseSource:
    """Average pulses of a concept's highest and lowest-active decile: from concept_pulses.npz when the
    grounding stage covered the concept, else averaged here over at most PULSE_WINDOWS windows each."""

    def __init__(self, run_dir: RunDir, fs: float, beat_samples: int):
        self.fs, self.beat_samples = fs, beat_samples
        self.windows = io.open_memmap_rows(run_dir.windows)
        self.arrays = read_concept_pulses(run_dir.concept_pulses) or {}
        self.grounded = {int(c): i for i, c in enumerate(self.arrays.get("concepts", []))}
        self._pulse = lru_cache(maxsize=None)(self._window_pulse)

    def _window_pulse(self, window_id: int) -> np.ndarray:
        return average_pulse(np.asarray(self.windows[window_id], dtype=np.float64), self.fs,
                             self.beat_samples).pulse

    def _computed(self, window_ids: np.ndarray) -> tuple[np.ndarray, int]:
        pulses = np.array([self._pulse(int(w)) for w in window_ids]).reshape(-1, self.beat_samples)
        usable = pulses[np.isfinite(pulses).all(axis=1)]
        mean = usable.mean(axis=0) if len(usable) >= 2 else np.full(self.beat_samples, np.nan)
        return mean, len(usable)

    def pulses(self, concept: int, activation: np.ndarray, window_ids: np.ndarray) -> dict[str, Any]:
        if concept in self.grounded:
            i = self.grounded[concept]
            return {"src": "grounding stage (decile of its window sample)", "n_high": None, "n_low": None,
                    "high": quantise(self.arrays["high_mean"][i]), "low": quantise(self.arrays["low_mean"][i])}
        active = np.flatnonzero(activation > 0)
        ranked = active[np.argsort(activation[active], kind="stable")]
        n_group = min(max(2, len(ranked) // 10), len(ranked) // 2, PULSE_WINDOWS)
        if n_group < 2:
            return {"reason": f"fires on {len(ranked)} windows: too few for two deciles"}
        high, n_high = self._computed(window_ids[ranked[-n_group:]])
        low, n_low = self._computed(window_ids[ranked[:n_group]])
        return {"src": f"computed here from at most {PULSE_WINDOWS} windows per decile",
                "high": quantise(high), "low": quantise(low), "n_high": n_high, "n_low": n_low}


def _morphology(run_dir: RunDir, cohort: Cohort, live: np.ndarray) -> tuple[dict[int, list], str | None]:
    """Per concept: [feature, rho, lo, hi, q, n] rows, from concept_morphology.csv when it covers the
    concept, else Spearman over patient means of the windows in morphology.parquet."""
    table = read_concept_correlations(run_dir.concept_morphology)
    covered = set() if table is None else set(table["concept"].astype(int))
    missing = [int(c) for c in live if int(c) not in covered]
    morphology = read_optional_parquet(run_dir.morphology)
    if missing and morphology is not None and "window_id" in morphology.columns:
        rows = cohort.index.reset_index().merge(morphology, on="window_id", how="inner")
        features = rows.drop(columns=[*cohort.index.columns, "index", "reason"], errors="ignore")
        computed = correlate_concepts_with_morphology(
            cohort.codes[rows["index"].to_numpy()][:, missing], np.array(missing),
            features.reset_index(drop=True), rows["patient_id"].to_numpy())
        table = computed if table is None else pd.concat([table, computed], ignore_index=True)
    if table is None:
        return {}, "grounding/concept_morphology.csv and morphology.parquet missing"
    table = table.assign(**{c: np.nan for c in ("q", "n_patients") if c not in table.columns})
    return {int(concept): [_morphology_row(row) for row in group.itertuples()]
            for concept, group in table.groupby("concept")}, None


def _morphology_row(row: Any) -> list[Any]:
    """[feature, rho, CI low, CI high, q, n patients] of one concept_morphology.csv row."""
    n = None if pd.isna(row.n_patients) else int(row.n_patients)
    low, high = stats.spearman_ci(row.rho, n or 0)
    return [row.feature, _round(row.rho), _round(low), _round(high), _round(row.q), n]


def _age_effects(run_dir: RunDir, cohort: Cohort) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(coef float64[K], contributions float64[P, K] in years) from aging/age_model.json, or the reason."""
    record = read_optional_json(run_dir.age_model)
    if not isinstance(record, dict) or "coef" not in record:
        return None, None, "aging/age_model.json missing"
    coef = np.asarray(record["coef"], dtype=np.float64)
    if coef.shape != (cohort.codes.shape[1],):
        return None, None, f"aging/age_model.json: {len(coef)} coefficients for K={cohort.codes.shape[1]}"
    try:
        predictor = age_predictor_from_record(record, str(run_dir.age_model))
    except StsaeError as exc:
        return coef, None, str(exc)
    return coef, predictor.contributions(cohort.patient_codes), None


def _concept_card(concept: int, cohort: Cohort, pool: WindowPool, pulses: PulseSource,
                  counts: tuple[int, int], seed: int) -> dict[str, Any]:
    activation = cohort.codes[:, concept]
    patients = cohort.row_patient
    top = _top_rows(activation, patients, counts[0], TOP_PER_PATIENT)
    quantiles = _quantile_rows(activation, counts[1], rng(seed, "report", "quantiles", concept)) if counts[1] else []
    mix_rows = _top_rows(activation, patients, MIX_TOP, TOP_PER_PATIENT)
    window_ids = cohort.index["window_id"].to_numpy(dtype=np.int64)
    return {"id": concept, "density": _round((activation > 0).mean()), "n_active": int((activation > 0).sum()),
            "mean_active": _round(activation[activation > 0].mean()) if (activation > 0).any() else None,
            "hist": _histogram(activation), "top": [pool.add(r) for r in top],
            "quantiles": [[pool.add(r) for r in rows] for rows in quantiles], "mix": _mix(cohort.index, mix_rows),
            "pulses": pulses.pulses(concept, activation, window_ids)}


def example_counts(n_live: int) -> tuple[int, int]:
    """(top windows, windows per quantile bin) per card, so that n_live cards need at most MAX_POOL_WINDOWS
    examples: 6 and 5 while that fits; fewer for large K, down to one top window and no quantile rows."""
    per_card = MAX_POOL_WINDOWS // max(n_live, 1)
    n_top = int(np.clip(per_card // 3, 1, TOP_WINDOWS))
    return n_top, int(np.clip((per_card - n_top) // QUANTILES, 0, PER_QUANTILE))


def _reliability_cells(reliability: dict[str, dict[str, Any]], concept: int) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for key, entry in reliability.items():
        if "values" in entry:
            cells[key] = {"v": _round(entry["values"][concept]), "note": entry["note"]}
            if "null" in entry:
                cells[key]["null"] = _round(entry["null"][concept])
        else:
            cells[key] = {"na": entry["reason"]}
    return cells


def _effects(concept: int, position: int, coef: np.ndarray | None, contrib: np.ndarray | None,
             age_reason: str | None, odds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Age contribution of `concept` and its HTN/T2D odds ratios (`odds[label][position]`, position in
    the live list)."""
    effect: dict[str, Any] = {}
    if coef is None or contrib is None:
        effect["age"] = {"na": age_reason}
    else:
        column = contrib[:, concept]
        effect["age"] = {"coef": _round(coef[concept]), "sd": _round(column.std()),
                         "lo": _round(column.min()), "hi": _round(column.max())}
    for label, fits in odds.items():
        fit = fits[position]
        effect[label] = ({"na": fit["skipped"]} if "skipped" in fit
                         else {k: _round(v) if k != "n" else v for k, v in fit.items()})
    return effect


def _patients(cohort: Cohort, pool: WindowPool, contrib: np.ndarray | None,
              predictions: pd.DataFrame | None) -> dict[str, Any]:
    """Per pooled patient: age, predicted age (when the age stage predicted it) and the nonzero contributions."""
    pred = {}
    if predictions is not None and {"patient_id", "age_pred"} <= set(predictions.columns):
        pred = dict(zip(predictions["patient_id"].astype(str), predictions["age_pred"], strict=True))
    shown = {entry["p"] for entry in pool.entries.values()}
    out = {}
    for i, pid in enumerate(cohort.patients["patient_id"]):
        key = pool.patient_hash(pid)
        if key not in shown:
            continue
        row = contrib[i] if contrib is not None else np.zeros(0)
        out[key] = {"age": _round(cohort.patients["age"].iloc[i], 3), "pred": _round(pred.get(pid), 3),
                    "split": str(cohort.patients["split"].iloc[i]),
                    "contrib": {str(c): _round(row[c]) for c in np.flatnonzero(row)}}
    return out


def build_dashboard(run_dir: RunDir, config: Config) -> dict[str, Any]:
    """The dashboard JSON object ({"available": False, "reason"} when the main model or embeddings are
    missing). Live concepts: those that fire on at least one window."""
    try:
        model = _main_model(run_dir, config)
        cohort = _cohort(run_dir, model, config.run.seed)
    except (InputDataError, FileNotFoundError) as exc:
        log.warning("concept dashboard not available: %s", exc)
        return {"available": False, "reason": str(exc)}
    if not run_dir.windows.is_file():
        return {"available": False, "reason": f"{run_dir.windows} missing"}
    live = np.flatnonzero((cohort.codes > 0).any(axis=0))
    fs = config.data.windowing.fs_target
    pool = WindowPool(run_dir, cohort, _patient_key(model.info.path), fs)
    pulses = PulseSource(run_dir, fs, config.grounding.beat_samples)
    reliability = _reliability(run_dir, config, model, cohort)
    coef, contrib, age_reason = _age_effects(run_dir, cohort)
    morphology, morph_reason = _morphology(run_dir, cohort, live)
    counts = example_counts(len(live))
    odds = {label: stats.activation_odds_ratios(cohort.patient_codes[:, live], cohort.patients, label,
                                                min_events=config.aging.min_events) for label in ("htn", "t2d")}
    cards = []
    for position, concept in enumerate(live):
        card = _concept_card(int(concept), cohort, pool, pulses, counts, config.run.seed)
        card["effect"] = _effects(int(concept), position, coef, contrib, age_reason, odds)
        card["morph"] = morphology.get(int(concept)) or {"na": morph_reason or "not in the grounding tables"}
        card["rel"] = _reliability_cells(reliability, int(concept))
        cards.append(card)
    return {"available": True, "model": model.info.name, "K": int(cohort.codes.shape[1]),
            "n_windows": len(cohort.index), "n_windows_all": cohort.n_all, "n_test": int(cohort.test.sum()),
            "n_live": len(live),
            "fs": fs / DECIMATE, "n_top": counts[0], "per_bin": counts[1], "concepts": cards,
            "windows": {str(k): v for k, v in pool.entries.items()},
            "patients": _patients(cohort, pool, contrib, read_optional_parquet(run_dir.predictions))}


def dashboard_json(data: dict[str, Any]) -> str:
    """Compact JSON safe inside <script type="application/json">: every "<" is escaped, so neither
    "</script>" nor "<!--" in a string can end or confuse the element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
