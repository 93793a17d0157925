"""Write a small but complete fake run directory in the formats of docs/CONTRACTS.md.

The figures, report and headline code read only files, so a fake run with plausible numbers lets
them be tested without training anything. Values are drawn from a fixed seed; the defaults describe a
synthetic run whose planted-truth scorecard passes, and tests edit single files to make checks fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsae.config import Config, config_to_yaml
from stsae.report.figures import draw_figures, write_figure_index
from stsae.rundir import RunDir
from stsae.utils import io

FS = 125.0
WINDOW_SAMPLES = 1250
ABLATIONS = ("no_smooth", "no_stab", "no_div", "no_renorm", "vanilla")
SEEDS = (0, 1)
MAIN_K = 1024
SWEEP_K = (256, 512, 1024, 2048)
STAGE_NAMES = ("prepare", "extract", "train", "baselines", "evaluate", "age", "ground")
SHA256 = "3f" * 32


def _windows_and_meta(rng: np.random.Generator, n_patients: int) -> tuple[np.ndarray, pd.DataFrame,
                                                                          pd.DataFrame]:
    """float32[N, 1250] pulse-like windows, meta with planted factors, qc with one missed artifact."""
    rows, windows = [], []
    t = np.arange(WINDOW_SAMPLES) / FS
    splits = np.array(["train", "val", "test"])[np.arange(n_patients) % 3]
    for p in range(n_patients):
        age = 20 + 70 * p / max(n_patients - 1, 1)
        htn, t2d = float(p % 4 == 0), float(p % 5 == 0)
        accel = 6 * htn + 4 * t2d + rng.normal(0, 1)
        for rec in range(2):
            for seg in range(4):
                hr = 60 + 15 * rng.random()
                phase = 2 * np.pi * hr / 60 * t
                pulse = np.sin(phase) + (0.2 + age / 200) * np.sin(2 * phase + 1)
                artifact = "none"
                if len(rows) % 13 == 5:
                    artifact = ("motion", "clipping", "flatline", "dropout")[len(rows) % 4]
                    noisy = pulse + rng.normal(0, 2, len(t))
                    pulse = np.zeros_like(pulse) if artifact == "flatline" else noisy
                windows.append(((pulse - pulse.mean()) / (pulse.std() + 1e-6)).astype(np.float32))
                rows.append({
                    "window_id": len(rows), "patient_id": f"P{p:03d}", "record_id": f"P{p:03d}-R{rec}",
                    "segment_idx": seg, "t_start_s": 10.0 * seg, "fs_orig": FS, "source": "synthetic",
                    "split": splits[p], "age": age, "sex": "MF"[p % 2], "htn": htn, "t2d": t2d,
                    "vascular_age": age + accel, "vascular_acceleration": accel, "hr_bpm": hr,
                    "resp_rate": 12 + 6 * rng.random(), "reflection_time": 0.3 - age / 500,
                    "aix": -0.2 + age / 150, "notch_depth": 0.5 - age / 300, "artifact": artifact,
                })
    meta = pd.DataFrame(rows)
    qc_pass = (meta["artifact"] == "none").to_numpy().copy()
    qc_pass[np.flatnonzero(~qc_pass)[0]] = True
    reasons = np.where(qc_pass, "", meta["artifact"].map({"motion": "low_sqi", "clipping": "clipping",
                                                          "flatline": "flatline", "dropout": "flatline"}))
    qc = pd.DataFrame({"window_id": meta["window_id"], "qc_pass": qc_pass, "qc_reason": reasons})
    return np.stack(windows), meta, qc


def _row(model: str, family: str, variant: str | None, k: int, seed: int | None, matched: bool,
         k_active: int | None, ev: float, l0: float, rng: np.random.Generator,
         **extra: Any) -> dict[str, Any]:
    jitter = rng.normal(0, 0.01)
    row = {
        "model": model, "family": family, "variant": variant, "K": k, "seed": seed,
        "matched_sparsity": matched, "k_active": k_active, "is_main": False, "ev": ev + jitter, "l0": l0,
        "dead_fraction_train": None, "dead_window_samples": None, "never_fired_test_fraction": 0.0,
        "n_test_windows": 400, "consistency_jaccard": 0.4, "consistency_cosine": 0.6,
        "consistency_heldout_aug": 0.35, "lag1_within_record": 0.1, "between_record_variance_share": 0.9,
        "lag1_pooled": 0.3, "lag1_pooled_unweighted": 0.2,
        "seed_stability_mean_cos": None, "seed_stability_frac_07": None, "seed_stability_frac_09": None,
        "subsample_stability_mean_cos": None, "subsample_stability_frac_07": None,
        "subsample_stability_frac_09": None, "stability_live_atoms": None, "stability_null_data_mean_cos": None,
        "stability_null_data_frac_07": None, "stability_null_isotropic_mean_cos": None,
        "probe": {}, "single_concept": {}, "reasons": {},
    }
    row.update(extra)
    return row


def _stsae_extra(variant: str, rng: np.random.Generator) -> dict[str, Any]:
    good = variant == "full"
    factors = ("vascular_age", "hr_bpm", "resp_rate", "reflection_time", "aix")
    probe = {f: {"metric": "r2", "value": (0.95 if good else 0.85) + rng.normal(0, 0.005), "raw_value": 0.97}
             for f in factors}
    probe["htn"] = {"metric": "auroc", "value": 0.7, "raw_value": 0.72}
    single = {"vascular_age": {"concept": 17, "abs_r": 0.86 if good else 0.7},
              "hr_bpm": {"concept": 3, "abs_r": 0.55}, "resp_rate": {"concept": 250, "abs_r": 0.48},
              "reflection_time": {"concept": 17, "abs_r": 0.8}, "aix": {"concept": 17, "abs_r": 0.79}}
    return {"dead_fraction_train": 0.002 if good else 0.03 + 0.1 * (variant == "no_renorm"),
            "dead_window_samples": 10_000,
            "consistency_jaccard": (0.78 if good else 0.55) + rng.normal(0, 0.02),
            "consistency_heldout_aug": (0.7 if good else 0.5) + rng.normal(0, 0.02),
            "lag1_within_record": (0.62 if good or variant == "no_stab" else 0.35) + rng.normal(0, 0.02),
            "seed_stability_mean_cos": (0.82 if good else 0.7) + rng.normal(0, 0.02),
            "seed_stability_frac_07": 0.8, "seed_stability_frac_09": 0.4, "stability_live_atoms": 250,
            "stability_null_data_mean_cos": 0.6, "stability_null_data_frac_07": 0.3,
            "stability_null_isotropic_mean_cos": 0.12, "probe": probe, "single_concept": single}


def _leaderboard(rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for variant in ("full", *ABLATIONS):
        for seed in SEEDS:
            ev = 0.95 if variant == "full" else 0.93
            rows.append(_row(f"stsae-{variant}-K{MAIN_K}-s{seed}", "stsae", variant, MAIN_K, seed, False,
                             None, ev, 16.0, rng, **_stsae_extra(variant, rng),
                             is_main=(variant, seed) == ("full", SEEDS[0])))
    for k in SWEEP_K:
        if k != MAIN_K:
            rows.append(_row(f"stsae-full-K{k}-s0", "stsae", "full", k, 0, False, None,
                             0.9 + 0.02 * np.log2(k / 256), 16.0, rng, **_stsae_extra("full", rng)))
    for family in ("pca", "ica", "nmf"):
        for n in (8, 16, 32):
            ev = {"pca": 0.7, "ica": 0.68, "nmf": 0.6}[family] + 0.08 * np.log2(n / 8)
            rows.append(_row(f"{family}-n{n}", family, family, n, None, False, None, ev, float(n), rng))
            if family != "nmf":
                rows.append(_row(f"{family}-n{n}", family, family, n, None, True, 8, ev - 0.05, 8.0, rng,
                                 consistency_jaccard=0.5, consistency_heldout_aug=0.45,
                                 lag1_within_record=0.3))
    return rows


def _pareto(rows: list[dict[str, Any]]) -> dict[str, Any]:
    candidates = (r for r in rows if r["family"] == "stsae" or r["matched_sparsity"])
    points = sorted(({"model": r["model"], "l0": r["l0"], "ev": r["ev"]} for r in candidates),
                    key=lambda p: (p["l0"], -p["ev"]))
    best, front = -np.inf, []
    for point in points:
        point["on_front"] = bool(point["ev"] > best)
        if point["on_front"]:
            best = point["ev"]
            front.append(point["model"])
    return {"points": points, "front": front}


def _aging(meta: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    patients = meta.groupby("patient_id").first().reset_index()
    age = patients["age"].to_numpy()
    pred = age + 0.8 * patients["vascular_acceleration"].to_numpy() + rng.normal(0, 3, len(age))
    corrected = pred + rng.normal(0, 0.5, len(age))
    base = patients[["patient_id", "split", "age", "sex", "htn", "t2d"]]
    predictions = base.assign(age_pred=pred, age_pred_corrected=corrected)
    delta = base.assign(delta_age=corrected - age, vascular_acceleration=patients["vascular_acceleration"])
    t2d = {"or_per_5y": 1.6, "ci_low": 1.1, "ci_high": 2.3, "p": 0.01, "n": len(age)}
    associations = {
        "metrics": {"mae": 3.4, "r": 0.93, "r2": 0.86, "delta_age_age_r": 0.02, "delta_age_planted_raw_r": 0.62,
                    "delta_age_planted_partial_r": 0.71},
        "bias_correction": {"fitted_on": "validation", "slope": 0.9, "intercept": 4.1},
        "associations": {
            "concepts": {"htn": {"or_per_5y": 2.1, "ci_low": 1.4, "ci_high": 3.2, "p": 0.001, "n": len(age)},
                         "t2d": t2d},
            "raw_embedding": {"htn": {"or_per_5y": 1.9, "ci_low": 1.2, "ci_high": 3.0, "p": 0.004,
                                      "n": len(age)},
                              "t2d": {"or_per_5y": 1.4, "ci_low": 0.9, "ci_high": 2.2, "p": 0.12,
                                      "n": len(age)}},
            "best_baseline": {"htn": {"skipped": "no baseline model"},
                              "t2d": {"skipped": "no baseline model"}},
        },
    }
    return predictions, delta, associations


def _grounding(run_dir: RunDir, meta: pd.DataFrame, rng: np.random.Generator) -> None:
    concepts = np.array([17, 3, 250])
    phase = np.linspace(0, 1, 100)
    def wave(centre: float, width: float) -> np.ndarray:
        return np.exp(-(((phase - centre) / width) ** 2))

    high = np.stack([wave(0.2, 0.08) + (0.6 - 0.1 * i) * wave(0.4, 0.1) for i in range(len(concepts))])
    low = np.stack([wave(0.25, 0.09) + 0.3 * wave(0.55, 0.1) for _ in concepts])
    band = 0.05
    with io.atomic_path(run_dir.grounding_dir / "concept_pulses.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, concepts=concepts, high_mean=high, high_lo=high - band, high_hi=high + band,
                 low_mean=low, low_lo=low - band, low_hi=low + band)
    features = ("stiffness_index", "reflection_index", "augmentation_index", "crest_time", "pulse_width",
                "sdppg_b_a", "sdppg_d_a", "aging_index")
    morphology = pd.DataFrame({"window_id": meta["window_id"],
                               **{f: rng.normal(size=len(meta)) for f in features}, "reason": ""})
    io.write_parquet(run_dir.grounding_dir / "morphology.parquet", morphology)
    table = pd.DataFrame([{"concept": c, "feature": f, "rho": rng.uniform(-0.8, 0.8),
                           "p": 1e-4 * (1 + i), "q": 1e-3 * (1 + i)}
                          for c in concepts for i, f in enumerate(features)])
    with io.atomic_open(run_dir.grounding_dir / "concept_morphology.csv") as handle:
        table.to_csv(handle, index=False)


def write_fake_run(root: Path, *, encoder_sha256: str = SHA256, seed: int = 0) -> RunDir:
    """A complete run directory under `root` as every stage up to `ground` would leave it."""
    run_dir = RunDir(root)
    rng = np.random.default_rng(seed)
    config = Config()
    io.write_text(run_dir.config_resolved, config_to_yaml(config))
    windows, meta, qc = _windows_and_meta(rng, n_patients=24)
    io.save_npy(run_dir.windows, windows)
    io.write_parquet(run_dir.meta, meta)
    io.write_parquet(run_dir.qc, qc)
    rows = _leaderboard(rng)
    io.write_json(run_dir.leaderboard, {"schema_version": 2, "rows": rows,
                                        "main_model": f"stsae-full-K{MAIN_K}-s{SEEDS[0]}"})
    io.write_json(run_dir.pareto, _pareto(rows))
    for seed_ in SEEDS:
        sidecar = run_dir.stsae_checkpoint("full", MAIN_K, seed_).with_suffix(".json")
        io.write_json(sidecar, {"variant": "full", "d_dict": MAIN_K, "seed": seed_, "activation": "topk",
                                "k": 16, "steps": 600, "complete": True, "train_config": {}, "metrics": {},
                                "input_mean_norm_over_std": 10.2, "effective_rank": 12.4})
    predictions, delta, associations = _aging(meta, rng)
    io.write_parquet(run_dir.predictions, predictions)
    io.write_parquet(run_dir.aging_dir / "delta_age.parquet", delta)
    io.write_json(run_dir.aging_dir / "associations.json", associations)
    _grounding(run_dir, meta, rng)
    stages = {name: {"started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:01:00+00:00",
                     "seconds": 10.0 * (i + 1), "fingerprint": f"{i:016x}"}
              for i, name in enumerate(STAGE_NAMES)}
    io.write_json(run_dir.manifest, {
        "run_name": "fixture", "seed": seed, "data_source": "synthetic", "git_commit": "abc1234",
        "versions": {"stsae": "0.1.0", "torch": "2.13.0"},
        "encoder": {"weights": None if encoder_sha256 == "RANDOM" else "papagei_s.pt",
                    "sha256": encoder_sha256},
        "stages": stages,
    })
    return run_dir


_DRAWN_FIGURES: list[Path] = []


def write_fake_run_with_figures(root: Path, cache_root: Path, **options: Any) -> RunDir:
    """`write_fake_run` plus the figures stage's output. Drawing takes seconds, so the figures are drawn
    once per test process (under `cache_root`) and copied; they depend only on the seeded data."""
    run_dir = write_fake_run(root, **options)
    if not _DRAWN_FIGURES:
        source = write_fake_run(cache_root / "drawn")
        write_figure_index(source, draw_figures(source))
        _DRAWN_FIGURES.append(source.figures_dir)
    shutil.copytree(_DRAWN_FIGURES[0], run_dir.figures_dir)
    return run_dir
