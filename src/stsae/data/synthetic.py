"""Synthetic fingertip-PPG cohort with planted vascular-age truth, streamed in record chunks.

Why: every later stage (embeddings, concepts, delta-age, grounding) can be checked against factors we
planted ourselves. The generator is shaped by the literature, not tuned to flatter any method.

Patients: age uniform in [age_min, age_max], sex 50/50, hypertension and type-2 diabetes with
prevalence rising with age (roughly NHANES: HTN ~6 % at 30 → ~70 % at 85, T2D ~2 % → ~27 %);
vascular_age = age + htn_acceleration·HTN + t2d_acceleration·T2D + N(0, vascular_noise_years).

Beat model (time τ since onset, seconds), a sum of three Gaussian waves:
  systolic  amplitude 1   at crest time t1      (crest time lengthens with stiffness)
  reflected amplitude a2  at t1 + reflection_time (arrives earlier and larger with vascular age:
            Millasseau 2002 peak-to-peak time ΔT shortens; Takazawa 1998 late-systolic augmentation)
  dicrotic  amplitude a3  after ejection, at LVET(HR) + 0.12 s (shrinks with age: the notch flattens)
LVET = 0.413 − 0.0017·HR s (Weissler 1968) scales the systolic timing; augmentation falls ~4 % per
10 bpm (Wilkinson 2000); women reflect earlier and slightly more (shorter stature, Hayward & Kelly 1997).
Individual deviations keep morphology from being a deterministic function of vascular age.

Each record: heart rate drifts (slow sinusoids), respiration drifts and modulates baseline (BW),
amplitude (AM) and beat rate (RSA, weaker with age); white sensor noise. A configured fraction of
the window_s slots of each record carries one artifact: motion, clipping, flatline or dropout (NaN).

Vectorised over records and samples (no per-sample Python loop); each record draws from its own
generator seeded by (seed, patient, record), so the cohort is identical for any chunk size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stsae.config import SyntheticSection
from stsae.errors import StsaeError
from stsae.utils.seeding import rng

log = logging.getLogger(__name__)

ARTIFACT_TYPES = ("none", "motion", "clipping", "flatline", "dropout")
PLANTED_COLUMNS = ("vascular_age", "vascular_acceleration", "hr_bpm", "resp_rate", "reflection_time",
                   "aix", "notch_depth", "artifact")
_N_DRIFT = 3  # slow sinusoids per drifting quantity (heart rate, respiration rate, baseline)
_N_MORPH_DEV = 4  # individual morphology deviations: crest time, reflection time, a2, a3


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_patients(cfg: SyntheticSection, seed: int) -> pd.DataFrame:
    """The cohort's patients, one row each (small: built whole, records are streamed).

    Columns: patient_id, age, sex ("M"/"F"), htn, t2d (float 0/1), vascular_age,
    vascular_acceleration, hr_base (bpm), resp_base (breaths/min), amplitude (a.u.),
    dev_0..dev_3 (standard-normal individual morphology deviations).
    """
    if cfg.age_max <= cfg.age_min:
        raise StsaeError(f"data.synthetic.age_max ({cfg.age_max}) must exceed data.synthetic.age_min "
                         f"({cfg.age_min})")
    g = rng(seed, "synthetic", "patients")
    n = cfg.n_patients
    age = g.uniform(cfg.age_min, cfg.age_max, n)
    female = g.random(n) < 0.5
    htn = g.random(n) < 0.75 * _logistic((age - 55.0) / 10.0)
    p_t2d = 0.32 * _logistic((age - 58.0) / 11.0) * np.where(htn, 1.5, 1.0)
    t2d = g.random(n) < np.minimum(p_t2d, 0.9)
    acceleration = (cfg.htn_acceleration_years * htn + cfg.t2d_acceleration_years * t2d
                    + g.normal(0.0, cfg.vascular_noise_years, n))
    frame = pd.DataFrame({
        "patient_id": [f"syn-{i:06d}" for i in range(n)],
        "age": age,
        "sex": np.where(female, "F", "M"),
        "htn": htn.astype(float),
        "t2d": t2d.astype(float),
        "vascular_age": age + acceleration,
        "vascular_acceleration": acceleration,
        "hr_base": np.clip(g.normal(70.0, 8.0, n) + 3.0 * female, 48.0, 105.0),
        "resp_base": np.clip(g.normal(15.0, 2.5, n), 9.0, 24.0),
        "amplitude": g.lognormal(0.0, 0.3, n),
    })
    deviations = g.standard_normal((n, _N_MORPH_DEV))
    for j in range(_N_MORPH_DEV):
        frame[f"dev_{j}"] = deviations[:, j]
    return frame


@dataclass(frozen=True)
class BeatShape:
    """Parameters of the three Gaussian waves (seconds / relative amplitude), broadcastable arrays."""

    t1: np.ndarray
    s1: np.ndarray
    reflection_time: np.ndarray
    a2: np.ndarray
    s2: np.ndarray
    t3: np.ndarray
    a3: np.ndarray
    s3: np.ndarray

    def __call__(self, tau: np.ndarray) -> np.ndarray:
        """Pulse value at time τ (s) since this beat's onset; 0 far from the beat."""
        def wave(a: np.ndarray | float, centre: np.ndarray, width: np.ndarray) -> np.ndarray:
            return a * np.exp(-0.5 * np.square((tau - centre) / width))

        return (wave(1.0, self.t1, self.s1) + wave(self.a2, self.t1 + self.reflection_time, self.s2)
                + wave(self.a3, self.t3, self.s3))


def beat_shape(vascular_age: np.ndarray, hr_bpm: np.ndarray, female: np.ndarray,
               dev: np.ndarray) -> BeatShape:
    """Beat morphology from vascular age, heart rate, sex and individual deviations.

    vascular_age, hr_bpm, female: broadcastable float arrays; dev: float[..., 4] standard normals
    (crest time, reflection time, reflected amplitude, dicrotic amplitude).
    """
    s = np.clip((vascular_age - 20.0) / 70.0, -0.2, 1.3)  # 0 at 20 y, 1 at 90 y vascular age
    lvet = 0.413 - 0.0017 * hr_bpm + 0.01 * female
    ratio = lvet / (0.413 - 0.0017 * 70.0)
    reflection_time = np.maximum((0.30 - 0.15 * s + 0.015 * dev[..., 1]) * (1.0 - 0.07 * female), 0.08)
    a2 = np.clip(0.30 + 0.50 * s + 0.05 * dev[..., 2] - 0.004 * (hr_bpm - 70.0) + 0.04 * female, 0.05, 1.2)
    a3 = np.maximum(0.22 - 0.16 * s + 0.03 * dev[..., 3], 0.02)
    return BeatShape(
        t1=(0.13 + 0.05 * s + 0.008 * dev[..., 0]) * ratio,
        s1=(0.05 + 0.014 * s) * ratio,
        reflection_time=reflection_time,
        a2=a2,
        s2=0.10 + 0.02 * s,
        t3=lvet + 0.12,
        a3=a3,
        s3=0.17 * ratio,
    )


def planted_morphology(shape: BeatShape) -> dict[str, np.ndarray]:
    """Planted reflection_time (s), aix and notch_depth of an isolated noise-free beat.

    aix = pulse at the reflected-wave time / systolic peak (the P2/P1 augmentation ratio);
    notch_depth = largest dip-then-rise after the systolic peak / systolic peak (0 = no notch).
    Shape arrays: [N]; returns float64[N] each.
    """
    rows = _as_rows(shape)
    tau = np.linspace(0.0, 1.2, 481)
    beats = rows(tau[None, :])
    peak_idx = np.argmax(beats, axis=1)
    peak = beats[np.arange(len(beats)), peak_idx]
    aix = rows(rows.t1 + rows.reflection_time)[:, 0] / peak
    after = np.arange(tau.size)[None, :] >= peak_idx[:, None]
    later_max = np.maximum.accumulate(np.where(after, beats, -np.inf)[:, ::-1], axis=1)[:, ::-1]
    rise = np.where(after, later_max - beats, 0.0)
    return {"reflection_time": rows.reflection_time[:, 0], "aix": aix, "notch_depth": rise.max(axis=1) / peak}


def _as_rows(shape: BeatShape, dtype: type = np.float64) -> BeatShape:
    """The same shape with every parameter as a [N, 1] column, to evaluate on a time grid."""
    return BeatShape(**{k: np.asarray(v, dtype=dtype).reshape(-1, 1) for k, v in vars(shape).items()})


@dataclass
class SyntheticChunk:
    """A batch of R equal-length records with their truth.

    records: R rows (patient columns + record_id, record_idx); signals: float64[R, n] raw PPG at fs
    (NaN inside dropouts); artifact: int8[R, n] index into ARTIFACT_TYPES per sample; hr, resp:
    float32[R, m] heart rate (bpm) and respiration rate (breaths/min) on the slow grid
    truth_t0 + arange(m) / truth_fs (seconds from the record start; they vary over many seconds).
    """

    records: pd.DataFrame
    signals: np.ndarray
    fs: float
    artifact: np.ndarray
    hr: np.ndarray
    resp: np.ndarray
    truth_fs: float
    truth_t0: float


def record_samples(cfg: SyntheticSection) -> int:
    """Samples per synthetic record at cfg.fs."""
    return round(cfg.minutes_per_record * 60.0 * cfg.fs)


def windows_per_record(cfg: SyntheticSection, window_s: float) -> int:
    """Non-overlapping window_s slots per record (the slots artifacts are planted on)."""
    return int(record_samples(cfg) // round(window_s * cfg.fs))


def iter_cohort(cfg: SyntheticSection, seed: int, window_s: float,
                shard: tuple[int, int] = (0, 1)) -> Iterator[SyntheticChunk]:
    """Yield the cohort's records in chunks of about cfg.chunk_windows windows (patient order).

    window_s: the slot length artifacts are planted on (the windowing's window length), so an artifact
    lands inside one window. Peak memory depends on chunk_windows, not on the cohort size.
    shard: (rank, world) renders only chunks rank, rank + world, rank + 2·world, … of the full sequence,
    so torchrun ranks split the cohort without rendering each other's chunks; a chunk's records and
    samples do not depend on the shard (every record draws from its own generator).
    """
    patients = make_patients(cfg, seed)
    log.info("synthetic cohort: %d patients (HTN %.0f%%, T2D %.0f%%), %d records of %.1f min at %g Hz",
             len(patients), 100 * patients["htn"].mean(), 100 * patients["t2d"].mean(),
             len(patients) * cfg.records_per_patient, cfg.minutes_per_record, cfg.fs)
    n = record_samples(cfg)
    per_chunk = max(1, cfg.chunk_windows // max(1, windows_per_record(cfg, window_s)))
    plan = pd.DataFrame({
        "patient_idx": np.repeat(np.arange(len(patients)), cfg.records_per_patient),
        "record_idx": np.tile(np.arange(cfg.records_per_patient), len(patients)),
    })
    rank, world = shard
    for start in range(rank * per_chunk, len(plan), world * per_chunk):
        part = plan.iloc[start:start + per_chunk]
        records = patients.iloc[part["patient_idx"].to_numpy()].reset_index(drop=True)
        records["record_idx"] = part["record_idx"].to_numpy()
        records["record_id"] = [f"{p}-r{r}" for p, r in zip(records["patient_id"], records["record_idx"],
                                                            strict=True)]
        yield _render_chunk(records, cfg, seed, n, window_s)


_SLOW_FS = 10.0  # Hz: heart rate, respiration and baseline vary slowly; computed here, interpolated up
_LEAD_S = 2.0  # slow processes start this early so the first beats of a record have a history
_BEAT_SPAN_S = 1.3  # a beat's waves are negligible beyond this time after its onset
_SCALARS = ("hr_offset", "resp_offset", "beat_phase", "resp_phase", "rsa", "am", "am_phase", "bw",
            "bw_phase", "dc", "noise_scale")


@dataclass
class _RecordDraws:
    """Every random number one record needs, drawn in a fixed order from its own generator."""

    scalars: np.ndarray  # float64[11], named by _SCALARS (offsets uniform: hr ±6 bpm, resp ±2 /min)
    hr_drift: np.ndarray  # float64[3, _N_DRIFT]: amplitude, frequency (Hz), phase (rad)
    resp_drift: np.ndarray
    base_drift: np.ndarray
    beat_jitter: np.ndarray  # float64[max_beats] per-beat amplitude factors
    noise: np.ndarray  # float32[n] standard normal


def _draw_record(g: np.random.Generator, n: int, max_beats: int) -> _RecordDraws:
    """One record's draws: three vectorised calls, so thousands of records cost milliseconds."""
    u = g.random(len(_SCALARS) + 3 * 3 * _N_DRIFT)
    lo, hi = np.array([(-6, 6), (-2, 2), (0, 1), (0, 1), (0.02, 0.06), (0.03, 0.12), (0, 2 * np.pi),
                       (0.05, 0.2), (0, 2 * np.pi), (0.5, 2.0), (0.7, 1.3)]).T
    scalars = lo + (hi - lo) * u[:len(_SCALARS)]
    drift = u[len(_SCALARS):].reshape(3, 3, _N_DRIFT)  # (hr, resp, baseline) x (amp, freq, phase) x J
    scale = np.array([4.0, 1.5, 0.3])[:, None] / np.sqrt(_N_DRIFT)
    drift = np.stack([(0.3 + 0.7 * drift[:, 0]) * scale, 1 / 300 + (1 / 30 - 1 / 300) * drift[:, 1],
                      2 * np.pi * drift[:, 2]], axis=1)
    return _RecordDraws(scalars=scalars, hr_drift=drift[0], resp_drift=drift[1], base_drift=drift[2],
                        beat_jitter=1.0 + 0.03 * g.standard_normal(max_beats),
                        noise=g.standard_normal(n, dtype=np.float32))


def _sum_of_sines(params: np.ndarray, t: np.ndarray) -> np.ndarray:
    """params: float[R, 3, J] (amplitude, Hz, phase); t: float[m] → float64[R, m]."""
    amp, freq, phase = (params[:, i, :, None] for i in range(3))
    return (amp * np.sin(2 * np.pi * freq * t[None, None, :] + phase)).sum(axis=1)


def _render_chunk(records: pd.DataFrame, cfg: SyntheticSection, seed: int, n: int,
                  window_s: float) -> SyntheticChunk:
    fs = cfg.fs
    r_count = len(records)
    slow_t = np.arange(-_LEAD_S, n / fs + _LEAD_S, 1.0 / _SLOW_FS)
    max_beats = int(np.ceil((n / fs + 2 * _LEAD_S) * 140.0 / 60.0)) + 2  # heart rate is clipped at 130
    generators = [rng(seed, "synthetic", "record", p, r)
                  for p, r in zip(records["patient_id"], records["record_idx"], strict=True)]
    draws = [_draw_record(g, n, max_beats) for g in generators]
    sc = {name: np.array([d.scalars[i] for d in draws])[:, None] for i, name in enumerate(_SCALARS)}
    amplitude = records["amplitude"].to_numpy()[:, None]

    # Slow processes on the coarse grid: float64[R, m].
    hr = np.clip(records["hr_base"].to_numpy()[:, None] + sc["hr_offset"]
                 + _sum_of_sines(np.stack([d.hr_drift for d in draws]), slow_t), 40.0, 130.0)
    resp = np.clip(records["resp_base"].to_numpy()[:, None] + sc["resp_offset"]
                   + _sum_of_sines(np.stack([d.resp_drift for d in draws]), slow_t), 6.0, 30.0)
    resp_phase = 2 * np.pi * (np.cumsum(resp / 60.0, axis=1) / _SLOW_FS + sc["resp_phase"])
    rsa = sc["rsa"] * np.clip(1.2 - records["age"].to_numpy()[:, None] / 100.0, 0.3, 1.0)  # weakens with age
    beat_phase = np.cumsum(hr / 60.0 * (1.0 + rsa * np.sin(resp_phase)), axis=1) / _SLOW_FS + sc["beat_phase"]
    gain = 1.0 + sc["am"] * np.sin(resp_phase + sc["am_phase"])
    baseline = (sc["dc"] + amplitude * _sum_of_sines(np.stack([d.base_drift for d in draws]), slow_t)
                + amplitude * sc["bw"] * np.sin(resp_phase + sc["bw_phase"]))

    # Beats: onset where the beat phase crosses an integer; per-beat heart rate and respiratory gain.
    rows, onsets, beat_hr, beat_amp = [], [], [], []
    for r in range(r_count):
        ks = np.arange(np.ceil(beat_phase[r, 0]), np.floor(beat_phase[r, -1]) + 1)
        onset = np.interp(ks, beat_phase[r], slow_t)
        rows.append(np.full(ks.size, r))
        onsets.append(onset)
        beat_hr.append(np.interp(onset, slow_t, hr[r]))
        beat_amp.append(amplitude[r, 0] * np.interp(onset, slow_t, gain[r]) * draws[r].beat_jitter[:ks.size])
    row, onset = np.concatenate(rows), np.concatenate(onsets)
    female = (records["sex"].to_numpy() == "F").astype(float)
    dev = records[[f"dev_{j}" for j in range(_N_MORPH_DEV)]].to_numpy()
    shape = _as_rows(beat_shape(records["vascular_age"].to_numpy()[row], np.concatenate(beat_hr),
                                female[row], dev[row]), np.float32)
    # Overlap-add every beat into a row buffer padded on both sides (no masking of beats at the edges).
    span = int(np.ceil(_BEAT_SPAN_S * fs))
    lead = int(np.ceil(_LEAD_S * fs))
    padded = lead + n + lead + span  # beats start up to _LEAD_S before and after the record
    first = np.ceil(onset * fs).astype(np.int64)
    tau = (np.arange(span, dtype=np.float32)[None, :] / np.float32(fs)
           + (first / fs - onset).astype(np.float32)[:, None])
    values = np.concatenate(beat_amp).astype(np.float32)[:, None] * shape(tau)
    flat = (row * padded + lead + first)[:, None] + np.arange(span)[None, :]
    pulse = np.bincount(flat.ravel(), weights=values.ravel(), minlength=r_count * padded)
    pulse = pulse.reshape(r_count, padded)[:, lead:lead + n]

    pos = (np.arange(n) / fs + _LEAD_S) * _SLOW_FS
    lo = np.floor(pos).astype(np.int64)
    w = pos - lo
    signal = (baseline[:, lo] * (1.0 - w) + baseline[:, lo + 1] * w + pulse
              + amplitude * cfg.noise_std * sc["noise_scale"] * np.stack([d.noise for d in draws]))
    artifact = np.zeros((r_count, n), dtype=np.int8)
    for r, g in enumerate(generators):
        _plant_artifacts(g, signal[r], artifact[r], fs, window_s, cfg.artifact_fraction, amplitude[r, 0])
    return SyntheticChunk(records=records, signals=signal, fs=fs, artifact=artifact, hr=hr.astype(np.float32),
                          resp=resp.astype(np.float32), truth_fs=_SLOW_FS, truth_t0=-_LEAD_S)


def _plant_artifacts(g: np.random.Generator, signal: np.ndarray, artifact: np.ndarray, fs: float,
                     window_s: float, fraction: float, amplitude: float) -> None:
    """Give each window_s slot of one record an artifact with probability `fraction` (in place)."""
    slot = round(window_s * fs)
    n_slots = signal.size // slot
    hit = g.random(n_slots) < fraction
    kinds = g.integers(1, len(ARTIFACT_TYPES), n_slots)
    for j in np.flatnonzero(hit):
        kind = ARTIFACT_TYPES[kinds[j]]
        lo = j * slot
        if kind == "clipping":
            # Saturation of the front end: the pulse tops (or troughs) pinned for the whole slot.
            segment = signal[lo:lo + slot]
            if g.random() < 0.7:
                segment[:] = np.minimum(segment, np.quantile(segment, g.uniform(0.75, 0.92)))
            else:
                segment[:] = np.maximum(segment, np.quantile(segment, g.uniform(0.08, 0.25)))
            span = slice(lo, lo + slot)
        else:
            low_s, high_s = {"motion": (3.0, window_s), "flatline": (3.0, window_s),
                             "dropout": (1.0, 6.0)}[kind]
            length = min(round(g.uniform(low_s, high_s) * fs), slot)
            start = lo + int(g.integers(0, slot - length + 1))
            span = slice(start, start + length)
            if kind == "motion":
                signal[span] += amplitude * _motion_burst(g, length, fs)
            elif kind == "flatline":
                signal[span] = signal[start]  # the sensor output freezes
            else:
                signal[span] = np.nan  # samples lost in transmission
        artifact[span] = ARTIFACT_TYPES.index(kind)


def _motion_burst(g: np.random.Generator, length: int, fs: float) -> np.ndarray:
    """Band-limited (0.3–4 Hz, overlapping the pulse band) burst, 1–4× pulse amplitude, tapered ends."""
    t = np.arange(length) / fs
    freqs = g.uniform(0.3, 4.0, 8)
    amps = g.uniform(0.2, 1.0, 8)
    burst = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None, :]
                                    + g.uniform(0, 2 * np.pi, 8)[:, None])).sum(axis=0)
    burst *= g.uniform(1.0, 4.0) / max(np.ptp(burst), 1e-12)
    taper = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.3) if length > 1 else np.ones(1)
    return burst * taper + g.uniform(-1.0, 1.0) * taper  # plus a baseline step while it lasts


def window_factors(chunk: SyntheticChunk, row: np.ndarray, t_start_s: np.ndarray,
                   window_s: float) -> pd.DataFrame:
    """Planted factors of each window (columns PLANTED_COLUMNS), from the chunk's truth.

    row: int64[N] record row in the chunk; t_start_s: float64[N] window start within the record.
    hr_bpm / resp_rate are window means; artifact is the type covering most of the window's artifact
    samples ("none" if it has none); morphology is the isolated beat at the window's mean heart rate.
    """
    slow_idx = (np.round((t_start_s - chunk.truth_t0) * chunk.truth_fs).astype(np.int64)[:, None]
                + np.arange(round(window_s * chunk.truth_fs))[None, :])
    hr = chunk.hr[row[:, None], slow_idx].mean(axis=1, dtype=np.float64)
    resp = chunk.resp[row[:, None], slow_idx].mean(axis=1, dtype=np.float64)
    idx = (np.round(t_start_s * chunk.fs).astype(np.int64)[:, None]
           + np.arange(round(window_s * chunk.fs))[None, :])
    codes = chunk.artifact[row[:, None], idx]
    counts = np.stack([(codes == k).sum(axis=1) for k in range(1, len(ARTIFACT_TYPES))], axis=1)
    kind = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1) + 1, 0)
    rec = chunk.records.iloc[row]
    female = (rec["sex"].to_numpy() == "F").astype(float)
    dev = rec[[f"dev_{j}" for j in range(_N_MORPH_DEV)]].to_numpy()
    morph = planted_morphology(beat_shape(rec["vascular_age"].to_numpy(), hr, female, dev))
    return pd.DataFrame({
        "vascular_age": rec["vascular_age"].to_numpy(),
        "vascular_acceleration": rec["vascular_acceleration"].to_numpy(),
        "hr_bpm": hr,
        "resp_rate": resp,
        "reflection_time": morph["reflection_time"],
        "aix": morph["aix"],
        "notch_depth": morph["notch_depth"],
        "artifact": np.asarray(ARTIFACT_TYPES, dtype=object)[kind],
    })
