"""NMF baseline encoding: scikit-learn's coordinate-descent `NMF.transform` (the old path) vs the exact
batched NNLS (block principal pivoting) on the Gram matrix (`NMFBaseline.transform`), on a demo-sized problem.

z: float32[4800, 512] drawn like the demo's PaPaGei-S embeddings (large mean, ‖μ‖/‖σ‖ ≈ 10, effective
rank ≈ 12, small isotropic noise). For each n, one NMF is fit, then both encoders run on the same rows in
interleaved rounds (median seconds), so a shared, loaded CPU slows both alike; the ratio is the result.
Also reported: each encoder's mean squared reconstruction error (exact NNLS can only be lower) and the
k-sparse re-encoding time used by the matched-sparsity rows.
Output: benchmarks/results/bench_nnls.json.

    .venv/bin/python benchmarks/bench_nnls.py [--rows 4800] [--n 32 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from stsae.models.baselines import NMFBaseline
from stsae.utils import io

HERE = Path(__file__).resolve().parent


def demo_like_z(rows: int, seed: int = 0) -> np.ndarray:
    """float32[rows, 512]: mean of norm ≈ 10 × the spread, 12 decaying factors plus 1 % noise."""
    gen = np.random.default_rng(seed)
    factors = gen.standard_normal((rows, 12)) * np.geomspace(1.0, 0.05, 12)
    z = factors @ np.linalg.qr(gen.standard_normal((512, 12)))[0].T + 0.01 * gen.standard_normal((rows, 512))
    mean = gen.standard_normal(512)
    mean *= 10 * np.linalg.norm(z.std(axis=0)) / np.linalg.norm(mean)
    return (z + mean).astype(np.float32)


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_one(z: np.ndarray, n: int, rounds: int, max_iter: int) -> dict[str, float]:
    model = NMFBaseline(n, seed=0, max_iter=max_iter).fit(z)
    shifted = z - model.shift_
    # the old path: the fitted sklearn estimator's transform, codes scaled to unit-norm atoms as before
    est = NMF(n_components=n, init="nndsvda", max_iter=max_iter, random_state=0).fit(shifted)
    old_atoms = est.components_ / np.linalg.norm(est.components_, axis=1, keepdims=True)
    np.testing.assert_allclose(old_atoms, model.components_, atol=1e-4)
    old_s, new_s, sparse_s = [], [], []
    for _ in range(rounds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            seconds, old_codes = timed(lambda: est.transform(shifted))
        old_s.append(seconds)
        seconds, new_codes = timed(lambda: model.transform(z))
        new_s.append(seconds)
        seconds, _ = timed(lambda: model.encode_k_sparse(z, 16))
        sparse_s.append(seconds)
    old_err = float(((shifted - old_codes @ est.components_) ** 2).sum(axis=1).mean())
    new_err = float(((z - model.decode(new_codes)) ** 2).sum(axis=1).mean())
    return {"n": n, "sklearn_cd_transform_s": statistics.median(old_s), "exact_nnls_s": statistics.median(new_s),
            "speedup": statistics.median(old_s) / statistics.median(new_s),
            "k16_sparse_reencode_s": statistics.median(sparse_s),
            "sklearn_cd_mse": old_err, "exact_nnls_mse": new_err,
            "mean_active_atoms": float(np.count_nonzero(new_codes, axis=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4800)
    parser.add_argument("--n", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=400, help="NMF fit and transform iteration cap")
    args = parser.parse_args()
    z = demo_like_z(args.rows)
    results = [bench_one(z, n, args.rounds, args.max_iter) for n in args.n]
    out = {"rows": args.rows, "dim": 512, "rounds": args.rounds, "max_iter": args.max_iter, "results": results}
    io.write_json(HERE / "results" / "bench_nnls.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
