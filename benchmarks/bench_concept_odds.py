"""Report stage at large K: per-concept HTN/T2D odds ratios, statsmodels one fit per concept (the old path)
vs one batched Newton over all concepts (`stsae.report.concept_stats.activation_odds_ratios`).

Data shaped like the 100k-window K=4096 run of the README (1,667 patients, 3,745 live concepts):
patient-mean codes float64[P, K] that are sparse and skewed (gamma × 30 % firing), age, sex, and HTN
drawn from a logistic model of one concept + age + sex; one extra column separates HTN perfectly, to
show it is reported, not fitted. The old path is timed on `--sample` concepts and extrapolated to K
(it is one independent fit per concept, so its time is linear in K); both paths are checked to agree
on those concepts (max relative difference of OR and CI bounds). Run interleaved `--rounds` times
(median), since the machine is shared. Output: benchmarks/results/bench_concept_odds.json.

    .venv/bin/python benchmarks/bench_concept_odds.py [--patients 1667] [--concepts 3745] [--sample 300]

Found 2026-11-30 on the shared 2-core box (load average 5-8 from other sessions, one BLAS thread), per
label at the default size: batched 4.0-6.5 s vs statsmodels 27-58 s (extrapolated from 300 fits; it
swings with the load), speed-up 4.6-9×; OR and CI bounds agree to 3e-15 (relative); the separating
concept is reported as "separation" by both. The README's K=4096 report run spent 142 s on these fits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from stsae.report.concept_stats import activation_odds_ratios
from stsae.utils import io

HERE = Path(__file__).resolve().parent


def cohort(patients: int, concepts: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    gen = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": gen.uniform(20, 80, patients), "sex": np.where(gen.random(patients) < 0.5, "M", "F")})
    codes = gen.gamma(0.3, size=(patients, concepts)) * (gen.random((patients, concepts)) < 0.3)
    logit = 2.0 * codes[:, 0] + 0.03 * (frame["age"].to_numpy() - 50) - 0.8
    frame["htn"] = (gen.random(patients) < 1 / (1 + np.exp(-logit))).astype(float)
    codes[:, -1] = frame["htn"].to_numpy() + 0.01 * gen.random(patients)  # separates HTN perfectly
    return codes, frame


def statsmodels_or(activation: np.ndarray, frame: pd.DataFrame) -> tuple[float, float, float] | None:
    """Per-SD OR and CI the old way (one `sm.Logit` on [1, activation, age, male]); None when it fails."""
    design = sm.add_constant(np.column_stack([activation, frame["age"], (frame["sex"] == "M").astype(float)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            fit = sm.Logit(frame["htn"].to_numpy(), design).fit(disp=0, maxiter=200)
        except (PerfectSeparationWarning, ConvergenceWarning):
            return None
    sd = activation.std(ddof=1)
    low, high = fit.conf_int()[1]
    return float(np.exp(sd * fit.params[1])), float(np.exp(sd * low)), float(np.exp(sd * high))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1667)
    parser.add_argument("--concepts", type=int, default=3745)
    parser.add_argument("--sample", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_concept_odds.json")
    args = parser.parse_args()
    codes, frame = cohort(args.patients, args.concepts)
    sample = np.r_[np.arange(args.sample - 1), args.concepts - 1]
    batched_s, old_s = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        batched = activation_odds_ratios(codes, frame, "htn", min_events=10)
        batched_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        old = [statsmodels_or(codes[:, c], frame) for c in sample]
        old_s.append((time.perf_counter() - start) * args.concepts / len(sample))
    worst = max(abs(batched[c][key] / value - 1) for c, ref in zip(sample, old, strict=True) if ref is not None
                for key, value in zip(("or", "lo", "hi"), ref, strict=True))
    result = {"patients": args.patients, "concepts": args.concepts, "rounds": args.rounds,
              "batched_s_median": statistics.median(batched_s),
              "statsmodels_s_median_extrapolated": statistics.median(old_s),
              "speedup": statistics.median(old_s) / statistics.median(batched_s),
              "max_rel_diff_or_ci": worst,
              "separating_concept": {"batched": batched[-1], "statsmodels_fitted": old[-1] is not None}}
    io.write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
