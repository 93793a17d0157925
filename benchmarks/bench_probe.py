"""Linear-probe cost per model: the patient-grouped ridge path (one eigendecomposition per outer fold,
exact leave-one-patient-out penalty choice) against the former per-fold sklearn RidgeCV (window-level
leave-one-out alpha) + LogisticRegression, on one core. One run, so compare the ratio; absolute figures
depend on the machine and its load.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe.py [--rows 5000] [--features 1024]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from stsae.eval.probe import grouped_folds, probe_all
from stsae.utils import io


def synthetic(rows: int, features: int, k: int = 16, windows_per_patient: int = 22):
    """Top-k sparse codes with uneven firing rates; 7 continuous factors and 3 binary labels, half of
    each carried by concepts and half by a per-patient latent the codes also see."""
    gen = np.random.default_rng(0)
    patient = np.arange(rows) // windows_per_patient
    latent = gen.standard_normal((patient.max() + 1, 3))[patient]
    pre = gen.standard_normal((rows, features)) + np.linspace(-1, 1, features)
    pre[:, :3] += 2 * latent
    top = np.argpartition(-pre, k, axis=1)[:, :k]
    codes = np.zeros((rows, features), dtype=np.float32)
    np.put_along_axis(codes, top, np.take_along_axis(pre, top, axis=1).clip(0) + 0.1, axis=1)
    factors = {f"c{i}": ("r2", latent[:, i % 3] + 0.5 * gen.standard_normal(rows)) for i in range(7)}
    factors |= {f"b{i}": ("auroc", (latent[:, i] + gen.standard_normal(rows) > 0).astype(float))
                for i in range(3)}
    return codes, factors, patient.astype(str)


def former(codes: np.ndarray, factors: dict, groups: np.ndarray, n_folds: int) -> None:
    """The previous probe: per factor and fold, StandardScaler + RidgeCV / LogisticRegression(C=1)."""
    for metric, y in factors.values():
        for train, test in grouped_folds(groups, n_folds):
            est = RidgeCV(alphas=np.logspace(-3, 4, 8)) if metric == "r2" else LogisticRegression(max_iter=2000)
            make_pipeline(StandardScaler(), est).fit(codes[train], y[train]).predict(codes[test])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_probe.json"))
    args = parser.parse_args()
    codes, factors, groups = synthetic(args.rows, args.features)
    load_before = os.getloadavg()[0]
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        scores = probe_all(codes, factors, groups, args.folds)
        new_s = time.perf_counter() - start
        start = time.perf_counter()
        former(codes, factors, groups, args.folds)
        old_s = time.perf_counter() - start
    result = {
        "rows": args.rows, "features": args.features,
        "live_features": int((np.ptp(codes, axis=0) > 0).sum()), "factors": len(factors),
        "folds": args.folds, "blas_threads": 1, "load_avg_1min_before": load_before,
        "load_avg_1min_after": os.getloadavg()[0],
        "seconds_grouped_ridge_path": new_s, "seconds_former_sklearn": old_s, "speedup": old_s / new_s,
        "scores": {name: s.value for name, s in scores.items()},
    }
    io.write_json(args.out, result)
    print(f"{args.rows} x {args.features} ({result['live_features']} live), {len(factors)} factors, "
          f"{args.folds} folds, 1 BLAS thread: grouped ridge path {new_s:.2f} s, former sklearn probes "
          f"{old_s:.2f} s, ratio {old_s / new_s:.1f}x")


if __name__ == "__main__":
    main()
