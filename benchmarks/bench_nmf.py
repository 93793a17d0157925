"""NMF fit: scikit-learn's coordinate descent (the old baselines path) vs extrapolated HALS
(`stsae.models.nmf.nmf_hals`, what `NMFBaseline.fit` runs), on the same shifted data.

Data: the train rows of a run directory (`--run-dir`, e.g. a copy of runs/demo: what the baselines stage
fits) or, without it, demo-like z (bench_nnls.demo_like_z). X = z − per-feature minimum, as NMFBaseline
fits. For each n, one fit of each (same NNDSVDa initialisation family, scikit-learn at `--max-iter`, ours
with its stopping rule and the same cap), timed in wall and CPU seconds. Reported: ½‖X − WH‖² of each,
iterations, whether each converged, and the speed ratio (scikit-learn seconds / ours). A shared, loaded
machine slows both; CPU seconds are the steadier ratio.
Output: benchmarks/results/bench_nmf.json.

    .venv/bin/python benchmarks/bench_nmf.py [--run-dir runs/demo] [--n 32 64 128] [--max-iter 300]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from bench_nnls import demo_like_z
from stsae.data.store import load_embeddings
from stsae.models.baselines import NMFBaseline
from stsae.models.nmf import nmf_hals
from stsae.rundir import RunDir
from stsae.utils import io

HERE = Path(__file__).resolve().parent


def train_rows(run_dir: Path | None, rows: int) -> np.ndarray:
    """float32[N, 512]: the run's train-split embeddings, or demo-like z of `rows` rows."""
    if run_dir is None:
        return demo_like_z(rows)
    emb = load_embeddings(RunDir(run_dir))
    return np.asarray(emb.z[emb.rows("train")], dtype=np.float32)


def timed_fit(fit) -> tuple[dict[str, float], object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fit()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}, out


def bench_one(x: np.ndarray, n: int, max_iter: int) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        old_t, est = timed_fit(lambda: NMF(n, init="nndsvda", max_iter=max_iter, random_state=0).fit(x))
    new_t, res = timed_fit(lambda: nmf_hals(x, n, max_iter=max_iter, tol=NMFBaseline.TOL, window=NMFBaseline.WINDOW))
    return {
        "n": n,
        "sklearn_cd": {**old_t, "objective": 0.5 * float(est.reconstruction_err_) ** 2, "n_iter": int(est.n_iter_),
                       "converged": int(est.n_iter_) < max_iter},
        "hals_extrapolated": {**new_t, "objective": res.objective, "n_iter": res.n_iter, "converged": res.converged},
        "objective_ratio_ours_over_sklearn": res.objective / (0.5 * float(est.reconstruction_err_) ** 2),
        "speedup_wall": old_t["wall_s"] / new_t["wall_s"],
        "speedup_cpu": old_t["cpu_s"] / new_t["cpu_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=6000, help="rows of demo-like z without --run-dir")
    parser.add_argument("--n", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--max-iter", type=int, default=300, help="the demo's baselines.max_iter")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_nmf.json")
    args = parser.parse_args()
    z = train_rows(args.run_dir, args.rows)
    x = (z - z.min(axis=0)).astype(np.float64)
    results = []
    for n in args.n:
        results.append(bench_one(x, n, args.max_iter))
        print(json.dumps(results[-1]), flush=True)
    out = {"data": str(args.run_dir) if args.run_dir else f"demo_like_z({args.rows})", "rows": x.shape[0],
           "dim": x.shape[1], "max_iter": args.max_iter, "tol": NMFBaseline.TOL, "window": NMFBaseline.WINDOW,
           "results": results}
    io.write_json(args.out, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
