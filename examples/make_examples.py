"""Write the sample pair examples/my_ppg.csv + examples/my_clinical.csv in the layout of your own data.

Why generated: the sample must be small (< 1 MB), reproducible and free to share, so it comes from the
built-in synthetic cohort (seed 0): 16 patients (enough for a 3-patient test split) × 41 s at 100 Hz,
stored as a long-form table with a millisecond timer that jitters by up to ±2 ms (as phone and wearable
clocks do) and 10-bit ADC counts,
plus a clinical table with age, sex, htn, t2d and one extra 0/1 phenotype column (`smoker`, drawn at
random: it carries no signal). Run: python examples/make_examples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stsae.config import SyntheticSection
from stsae.data.synthetic import iter_cohort

HERE = Path(__file__).resolve().parent
N_PATIENTS = 16
SECONDS = 41  # four 10 s windows, with room for the jittered clock
FS_HZ = 100.0
JITTER_MS = 2


def _cohort() -> tuple[pd.DataFrame, np.ndarray]:
    cfg = SyntheticSection(n_patients=N_PATIENTS, records_per_patient=1, minutes_per_record=SECONDS / 60,
                           fs=FS_HZ, artifact_fraction=0.0)
    chunks = list(iter_cohort(cfg, seed=0, window_s=10.0))
    records = pd.concat([c.records for c in chunks], ignore_index=True)
    records["patient_id"] = [f"p{i + 1}" for i in range(len(records))]  # short ids keep the file small
    return records, np.concatenate([c.signals for c in chunks])


def _ppg_table(records: pd.DataFrame, signals: np.ndarray, g: np.random.Generator) -> pd.DataFrame:
    parts = []
    for patient, signal in zip(records["patient_id"], signals, strict=True):
        scaled = (signal - signal.mean()) / signal.std()
        ticks = np.arange(signal.size) * 1000.0 / FS_HZ + g.integers(-JITTER_MS, JITTER_MS + 1, signal.size)
        parts.append(pd.DataFrame({"patient_id": patient, "time_ms": ticks.astype(np.int64),
                                   "ppg": np.clip(np.round(512 + 120 * scaled), 0, 1023).astype(np.int64)}))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    records, signals = _cohort()
    g = np.random.default_rng(0)
    _ppg_table(records, signals, g).to_csv(HERE / "my_ppg.csv", index=False)
    clinical = records[["patient_id", "age", "sex", "htn", "t2d"]].copy()
    clinical["age"] = clinical["age"].round(1)
    clinical[["htn", "t2d"]] = clinical[["htn", "t2d"]].astype(np.int64)
    clinical["smoker"] = g.integers(0, 2, len(clinical))
    clinical.to_csv(HERE / "my_clinical.csv", index=False)


if __name__ == "__main__":
    main()
