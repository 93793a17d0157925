"""Typed configuration: the single source of truth for every stage, the CLI and what a run records.

Every YAML key maps to a documented pydantic field. Unknown keys, wrong types and out-of-range
values fail with one line that names the dotted key (and, for typos, the closest valid key), so a
misspelt hyperparameter can never be silently ignored.
"""

from __future__ import annotations

import difflib
import itertools
import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stsae.errors import StsaeError


class ConfigError(StsaeError, ValueError):
    """A config file or override is invalid; the message is one line naming the key."""


# PaPaGei-S embeds 10 s windows at 125 Hz; any other window length only fails later, in extract.
ENCODER_WINDOW_SAMPLES = 1250
ENCODER_FS_HZ = 125.0
# Longest echo of a user value in an error; a YAML alias bomb must not become a 32 MB "one line".
_ECHO_CHARS = 200
_ECHO = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict = 3, 8, 8
_ECHO.maxstring = _ECHO.maxother = _ECHO_CHARS
# A stage's compute device (resolved by stsae.utils.device.resolve_device when the stage starts).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
DEVICE_HELP = ("auto (CUDA when available) | cpu | cuda (cuda:LOCAL_RANK under torchrun) | cuda:N; "
               "a CUDA request without CUDA is an error.")


class _Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    name: str = Field("demo", description="Run name; the default run directory is runs/<name>.")
    seed: int = Field(0, ge=0, description="The one seed every random choice in the pipeline flows from.")


class SyntheticSection(_Section):
    n_patients: int = Field(120, ge=1, description="Patients in the built-in synthetic cohort.")
    records_per_patient: int = Field(2, ge=1, description="Separate recordings per patient.")
    minutes_per_record: float = Field(2.0, gt=0, description="Length of each recording in minutes.")
    fs: float = Field(125.0, gt=0, description="Sampling rate (Hz) the synthetic signal is generated at.")
    age_min: float = Field(20.0, ge=0, description="Youngest chronological age in the cohort (years).")
    age_max: float = Field(90.0, gt=0, description="Oldest chronological age in the cohort (years).")
    htn_acceleration_years: float = Field(
        6.0, description="Years of vascular age added by hypertension (planted effect)."
    )
    t2d_acceleration_years: float = Field(
        4.0, description="Years of vascular age added by type-2 diabetes (planted effect)."
    )
    vascular_noise_years: float = Field(
        3.0, ge=0, description="SD of the individual vascular-age deviation (years)."
    )
    artifact_fraction: float = Field(
        0.08, ge=0, le=0.9, description="Fraction of windows given a motion/clipping/flat/dropout artifact."
    )
    noise_std: float = Field(0.02, ge=0, description="Sensor noise SD relative to pulse amplitude.")
    chunk_windows: int = Field(
        4096, ge=1, description="Windows generated per chunk; bounds peak memory while streaming."
    )


class WindowingSection(_Section):
    fs_target: float = Field(125.0, gt=0, description="Sampling rate (Hz) windows are resampled to.")
    window_s: float = Field(10.0, gt=0, description="Window length in seconds (PaPaGei-S: 10 s).")
    stride_s: float = Field(10.0, gt=0, description="Stride between window starts in seconds.")
    filter: Literal["butterworth", "cheby2", "none"] = Field(
        "butterworth", description="Band-pass: butterworth (fast default) or cheby2 (PaPaGei parity)."
    )
    band_low_hz: float = Field(0.5, gt=0, description="Band-pass lower edge (Hz).")
    band_high_hz: float = Field(12.0, gt=0, description="Band-pass upper edge (Hz).")
    filter_order: int = Field(4, ge=1, le=12, description="Band-pass filter order.")

    @model_validator(mode="after")
    def _encoder_window_and_stride(self) -> WindowingSection:
        if self.fs_target != ENCODER_FS_HZ:
            raise ValueError(f"data.windowing.fs_target={self.fs_target:g} Hz: PaPaGei-S was trained on "
                             f"{ENCODER_FS_HZ:g} Hz windows")
        samples = self.window_s * self.fs_target
        if abs(samples - ENCODER_WINDOW_SAMPLES) > 1e-6:
            raise ValueError(
                f"data.windowing.window_s={self.window_s:g} s at fs_target={self.fs_target:g} Hz gives "
                f"{samples:g} samples; PaPaGei-S needs {ENCODER_WINDOW_SAMPLES} "
                f"({ENCODER_WINDOW_SAMPLES / ENCODER_FS_HZ:g} s at {ENCODER_FS_HZ:g} Hz)")
        if round(self.stride_s * self.fs_target) < 1:
            raise ValueError(f"data.windowing.stride_s={self.stride_s:g} s is shorter than one sample at "
                             f"fs_target={self.fs_target:g} Hz")
        if self.band_low_hz >= self.band_high_hz:
            raise ValueError(f"data.windowing.band_low_hz={self.band_low_hz:g} must be below "
                             f"band_high_hz={self.band_high_hz:g}")
        return self


class QCSection(_Section):
    hr_min_bpm: float = Field(30.0, gt=0, description="Lowest plausible heart rate (bpm).")
    hr_max_bpm: float = Field(200.0, gt=0, description="Highest plausible heart rate (bpm).")
    flatline_min_std: float = Field(
        1e-3, ge=0,
        description="A 0.25 s block is flat if its SD is below this fraction of the window's range.",
    )
    flatline_max_fraction: float = Field(
        0.1, ge=0, le=1, description="Max fraction of a window allowed to be flat before rejection."
    )
    clipping_max_fraction: float = Field(
        0.05, ge=0, le=1, description="Max fraction of samples pinned at the window's extremes."
    )
    min_template_sqi: float = Field(
        0.86, ge=-1, le=1,
        description="Min mean beat-to-median-beat correlation (template SQI; 0.86 as Orphanidou 2015).",
    )
    max_poor_beat_fraction: float = Field(
        0.2, ge=0, le=1,
        description="Max fraction of beats whose template correlation is below min_template_sqi.",
    )


AugmentFamily = Literal["warp", "shift", "amplitude", "wander", "noise", "motion"]


class AugmentSection(_Section):
    amplitude_scale: tuple[float, float] = Field((0.8, 1.2), description="Uniform amplitude gain range.")
    baseline_wander_amp: float = Field(0.2, ge=0, description="Baseline wander amplitude (window SD units).")
    baseline_wander_hz: tuple[float, float] = Field((0.05, 0.3), description="Baseline wander freq range.")
    noise_std: float = Field(0.05, ge=0, description="Additive Gaussian noise SD (window SD units).")
    max_shift_s: float = Field(0.2, ge=0, description="Max circular time shift (s).")
    max_warp: float = Field(0.03, ge=0, lt=0.5, description="Max relative time-warp (stretch) factor.")
    motion_burst_prob: float = Field(
        1.0, ge=0, le=1, description="Probability of a short motion burst in a window of the 'motion' family.")
    motion_burst_s: float = Field(0.5, ge=0, description="Motion burst duration (s).")
    motion_burst_amp: float = Field(1.0, ge=0, description="Motion burst peak amplitude (window SD units).")
    stability_families: list[AugmentFamily] = Field(
        ["shift", "amplitude", "wander", "noise"],
        description="Families applied to make z_aug, the view L_stab trains f(z_aug) ≈ f(z) on. 'warp' is "
        "left out by default: a ±3 % stretch moves the reflected wave by ≈ 9 ms, about 4–5 planted years "
        "of vascular age, so L_stab would teach concepts to ignore an aging cue.",
    )
    heldout_families: list[AugmentFamily] = Field(
        ["motion"],
        description="Families applied to make z_aug_heldout, the view the model never trains against "
        "(consistency_heldout_aug); must not overlap stability_families. Empty: no held-out view.",
    )

    @model_validator(mode="after")
    def _families_disjoint(self) -> AugmentSection:
        shared = sorted(set(self.stability_families) & set(self.heldout_families))
        if shared:
            raise ValueError(f"data.augment.heldout_families shares {shared} with "
                             "data.augment.stability_families: a held-out family must be unseen in training")
        return self


class SplitSection(_Section):
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Fraction of patients in validation.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Fraction of patients in test.")
    age_bin_edges: list[float] = Field(
        [0, 40, 55, 70, 200], min_length=2, description="Age-bin edges for stratification (years)."
    )

    @model_validator(mode="after")
    def _increasing_edges(self) -> SplitSection:
        edges = self.age_bin_edges
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"data.split.age_bin_edges must be strictly increasing, got {edges}")
        return self


class DataSection(_Section):
    source: Literal["synthetic", "pulsedb", "mimic_iii", "mimic_iv", "table", "wfdb", "npz"] = Field(
        "synthetic", description="Where raw PPG comes from: the built-in synthetic cohort, a named database, "
        "or your own PPG as a CSV/Parquet table, a WFDB directory or an .npz file (DATA_GUIDE.md)."
    )
    synthetic: SyntheticSection = Field(default_factory=SyntheticSection)
    pulsedb_root: Path | None = Field(None, description="PulseDB root (holds Segment_Files/).")
    pulsedb_signal: Literal["PPG_Raw", "PPG_F"] = Field("PPG_Raw", description="PulseDB PPG field.")
    pulsedb_subset_info: Path | None = Field(
        None, description="Optional PulseDB Info .mat (e.g. Train_Info.mat) selecting subjects."
    )
    mimic_iii_root: Path | None = Field(None, description="MIMIC-III waveform matched subset root.")
    mimic_iii_clinical: Path | None = Field(None, description="MIMIC-III clinical CSV directory.")
    mimic_iv_root: Path | None = Field(None, description="MIMIC-IV waveform database root.")
    mimic_iv_clinical: Path | None = Field(None, description="MIMIC-IV hosp CSV directory.")
    pulsedb_folders: list[Literal["PulseDB_MIMIC", "PulseDB_Vital"]] = Field(
        ["PulseDB_MIMIC", "PulseDB_Vital"], description="PulseDB Segment_Files sub-folders read."
    )
    table_path: Path | None = Field(
        None, description="source=table: CSV or Parquet, long form (one row per sample) or one row per record "
        "with an array column `ppg` and a column `fs`."
    )
    table_time_column: str = Field(
        "time", description="source=table, long form: the timestamp column (absent: a per-record `fs` column "
        "gives the rate)."
    )
    table_time_unit: Literal["s", "ms", "datetime"] = Field(
        "s", description="Unit of table_time_column: seconds, milliseconds, or date-times (ISO 8601, mixed "
        "precision allowed)."
    )
    table_chunk_rows: int = Field(
        500_000, ge=1, description="source=table: rows read at a time (memory is one chunk plus one record)."
    )
    wfdb_root: Path | None = Field(
        None, description="source=wfdb: a PhysioNet-style directory (RECORDS file, else every header found)."
    )
    npz_path: Path | None = Field(
        None, description="source=npz: arrays ppg (2-D, or 1-D concatenated with offsets), fs, patient_id, "
        "optional record_id."
    )
    npz_allow_pickle: bool = Field(
        False, description="source=npz: accept an object-array ppg (needs pickle: only for files you trust)."
    )
    clinical_path: Path | None = Field(
        None, description="table/wfdb/npz: CSV or Parquet keyed by patient_id with age, sex, htn, t2d and any "
        "extra 0/1 phenotype columns (copied to meta.parquet)."
    )
    max_gap_s: float = Field(
        1.0, gt=0, description="Timestamped signals: a step longer than this (s) ends a record; shorter "
        "irregular steps are interpolated onto a uniform grid."
    )
    ppg_channels: list[str] = Field(
        ["PLETH", "Pleth"], description="WFDB channel names taken as PPG, case-insensitive, first match per "
        "segment wins (wfdb, mimic_iii, mimic_iv)."
    )
    max_record_s: float = Field(
        3600.0, gt=0, description="Longest record yielded (s); longer gap-free runs are split so memory "
        "per record stays bounded."
    )
    max_records: int | None = Field(None, ge=1, description="Cap on records read (None: all).")
    windowing: WindowingSection = Field(default_factory=WindowingSection)
    qc: QCSection = Field(default_factory=QCSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    split: SplitSection = Field(default_factory=SplitSection)


class EncoderSection(_Section):
    weights: Path | None = Field(None, description="Path to the published papagei_s.pt state_dict.")
    allow_random_weights: bool = Field(
        False, description="Run with a seeded random PaPaGei-S when no weights are configured (demo only)."
    )


class ExtractSection(_Section):
    device: str = Field("auto", pattern=DEVICE_PATTERN, description=DEVICE_HELP)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Windows per encoder forward pass; auto: 64 on the CPU, on CUDA the largest "
        "power of two whose measured activation memory fits in half the free GPU memory.")
    chunk_rows: int = Field(2048, ge=1, description="Rows flushed and committed per resumable chunk.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "auto",
        description="auto picks bf16 autocast only on CPUs with native bf16 and only when it keeps min "
        "cosine >= 0.999 to fp32 on a calibration batch, else fp32.",
    )
    num_threads: int | None = Field(
        None, ge=1, description="Torch intra-op threads per process (None: usable cores / torchrun ranks)."
    )
    augment_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="Processes augmenting windows beside the loader thread (0: in the thread). auto: 0 "
        "on the CPU (the encoder needs its cores), usable cores - 1 per rank on CUDA, where one thread's "
        "seeded per-window augmentation (a few thousand windows/s) would starve the GPU.",
    )
    augment_on: Literal["auto", "cpu", "device"] = Field(
        "auto", description="Where z_aug's augmented windows are computed from their per-window draws: cpu = "
        "numpy on the host, in the loader thread or augment_workers (the reference bytes); device = the same "
        "arithmetic in torch float64 on extract.device (data/augment_torch.py; windows within 1 float32 ulp per "
        "sample of cpu's, the host then only draws); auto = device when extract.device is CUDA.",
    )
    augment_draws: Literal["host", "philox"] = Field(
        "host", description="Where the augmentations' per-window random draws come from: host = one numpy "
        "generator per (seed, window_id) (the reference stream); philox = Philox4x32-10 keyed by (seed, "
        "window_id), computed on extract.device with no host work (data/philox.py). philox is another random "
        "stream, so it changes z_aug's bytes (same distributions); it needs augment_on to resolve to device.",
    )
    compile: Literal["auto"] | bool = Field(
        "auto",
        description="torch.compile (Inductor, frozen weights) the encoder: faster on CPU after a compile of "
        "tens of seconds; auto: only when a process encodes >= 200k windows (clean + augmented) and g++ is "
        "present.",
    )


class LossWeights(_Section):
    sp: float = Field(1e-3, ge=0, description="Weight of L_sp (L1 sparsity; relu activation only).")
    div: float = Field(1e-2, ge=0, description="Weight of L_div (decoder atom decorrelation).")
    stab: float = Field(0.05, ge=0, description="Weight of L_stab (f(z_t) vs f(z_aug_t)).")
    smooth: float = Field(0.05, ge=0, description="Weight of L_smooth (f(z_t) vs f(z_{t+1})).")
    auxk: float = Field(1 / 32, ge=0, description="Weight of the AuxK dead-latent loss (topk only).")


ABLATIONS = ("no_smooth", "no_stab", "no_div", "no_renorm", "vanilla")
# train.sparse_decode: auto gathers atoms from K >= this many times k (paired steps, 2-core CPU, one thread:
# dense decode 0.91x the gather's step time at K/k = 8, 1.07x / 1.09x at 16 / 32)
SPARSE_DECODE_MIN_RATIO = 16


class TrainSection(_Section):
    device: str = Field("auto", pattern=DEVICE_PATTERN, description=DEVICE_HELP)
    activation: Literal["topk", "relu"] = Field("topk", description="Top-K (default) or ReLU + L1.")
    d_dict: int = Field(1024, ge=1, description="Dictionary size K of the main ('full') model.")
    k: int = Field(16, ge=1, description="Active concepts per window for Top-K.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate after warm-up.")
    lr_reference_d_dict: int | None = Field(
        None, ge=1, description="If set, train.lr holds at this K and K atoms train at "
        "lr·(ref/K)^lr_scale_exponent; null: the same lr for every K."
    )
    lr_scale_exponent: float = Field(
        0.5, ge=0, le=1, description="How steeply the lr falls with K above lr_reference_d_dict: 0.5 is "
        "dictionary_learning's 1/√K; 0 the same lr for every K."
    )
    init: Literal["random", "data"] = Field(
        "random", description="Initial atoms: random unit directions (Gao et al.) or random standardised "
        "train rows ('data'); the encoder starts tied to them. Random left fewer latents dead "
        "(benchmarks/bench_sae_init.py)."
    )
    init_fit_scale: bool = Field(
        False, description="Scale the tied encoder so the first reconstruction has least-squares "
        "magnitude: needed by init 'data' (unscaled data-row atoms overshoot the variance by orders of "
        "magnitude), harmful with random atoms (more latents dead; benchmarks/bench_sae_init.py)."
    )
    batch_size: int = Field(256, ge=1, description="Triplets per optimizer step.")
    steps: int = Field(2000, ge=1, description="Optimizer steps per model.")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up steps.")
    lr_decay_start: float = Field(
        0.8, ge=0, le=1, description="Fraction of steps after which the lr decays linearly to 0, never "
        "before the end of warm-up (0: straight from the end of warm-up)."
    )
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    bf16: bool = Field(False, description="bf16 autocast in the forward pass.")
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    div_sample: int = Field(
        128, ge=2, description="Atoms sampled per step for L_div when K is larger "
        "(pairs among them: O(div_sample² · d) per step)."
    )
    dead_after_samples: int = Field(
        20_000, ge=1, description="A latent not fired for this many samples counts as dead (AuxK). 20k "
        "rather than 50k: with the fitted AuxK scale an earlier AuxK halved the never-firing latents after 50 "
        "steps (benchmarks/README.md, 'AuxK code')."
    )
    dead_after_fair_shares: float | None = Field(
        None, gt=0, description="Top-K: a latent also counts as dead after this many fair-share intervals "
        "(K/k samples, how often each latent would fire if all fired equally) without firing, when that is "
        "shorter than dead_after_samples: a fixed window is long for a small dictionary, whose latents should "
        "fire every few dozen samples, and lets rare latents through (benchmarks/README.md, 'Lazy Adam'). "
        "null: dead_after_samples at every K."
    )
    aux_k: int = Field(256, ge=1, description="Dead latents used by the AuxK loss.")
    auxk_fit_scale: bool = Field(
        True, description="Compare the residual with the AuxK reconstruction at its least-squares scale "
        "(capped at 1), so that an overshooting AuxK reconstruction does not push the dead latents' codes "
        "below zero for good (stsae.train.losses.auxk_scale); false: plain AuxK (Gao et al.)."
    )
    auxk_code: Literal["relu", "straight_through", "linear"] = Field(
        "relu", description="AuxK codes of the selected dead latents: 'relu' (post-ReLU pre-activations, "
        "gradient only where positive: Gao et al., dictionary_learning), 'straight_through' (the same "
        "codes, encoder gradient through the ReLU) or 'linear' (raw pre-activations as codes; "
        "benchmarks/README.md, 'AuxK code')."
    )
    lazy_adam: bool = Field(
        True, description="A latent with no gradient in a step (Top-K: neither selected nor AuxK's) keeps its "
        "weights and Adam moments (torch's SparseAdam rule) instead of coasting on the momentum of its last "
        "firing, which left more latents dead (benchmarks/README.md, 'Lazy Adam')."
    )
    checkpoint_every: int = Field(500, ge=1, description="Steps between resumable checkpoints.")
    eval_every: int = Field(250, ge=1, description="Steps between validation evaluations.")
    val_triplets: int = Field(1024, ge=1, description="Validation triplets (fixed subset) per evaluation.")
    patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without val-loss improvement (0: never)."
    )
    keep_best: bool = Field(True, description="Return the weights of the best validation evaluation.")
    stats_max_rows: int = Field(
        100_000, ge=2, description="Train rows sampled for the input mean/scale and effective rank."
    )
    sparse_decode: bool | Literal["auto"] = Field(
        "auto", description="Top-K: decode by gathering the k active atoms (true) or by a dense matmul of the "
        "scattered codes (false); auto: gather from K >= 16·k, below which the matmul is faster (K=128, k=16: "
        "a training step 9 % faster dense; K=256 and 512: 7-9 % slower)."
    )
    fused_grid: bool = Field(
        True, description="Train the grid models of one K that read the same triplet parts together as one "
        "batched model (same weights as one by one, less per-step overhead at small K); false: one model at a time."
    )
    parallel: Literal["grid", "ddp"] = Field(
        "grid", description="Under torchrun with W ranks: 'grid' deals the grid's models into W shares of "
        "about equal work, each rank training its own share alone (no per-step communication, every model "
        "byte-identical to a one-process run); 'ddp' trains every model on all ranks, each taking a slice "
        "of every batch (for a grid of fewer models than ranks, e.g. one large K)."
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="One process on the CPU (no torchrun): train the grid as this many shares in "
        "local worker processes, the cores split evenly among them (same model files); auto: one per core, "
        "at most as many as the largest K lets balance. Ignored under torchrun and on a GPU."
    )
    ablations: list[Literal["no_smooth", "no_stab", "no_div", "no_renorm", "vanilla"]] = Field(
        list(ABLATIONS), description="Ablations trained next to 'full'."
    )
    d_dict_sweep: list[int] = Field([1024, 2048, 4096, 8192], description="K values of the K-sweep.")
    seeds: list[int] = Field(
        [0, 1, 2], min_length=1, description="Seeds trained per variant (seed stability); the first is the main model."
    )

    def lr_for(self, d_dict: int) -> float:
        """Peak learning rate of a dictionary of `d_dict` atoms (see lr_reference_d_dict, lr_scale_exponent)."""
        if self.lr_reference_d_dict is None:
            return self.lr
        return self.lr * (self.lr_reference_d_dict / d_dict) ** self.lr_scale_exponent

    def sparse_decode_for(self, d_dict: int) -> bool:
        """Whether a `d_dict`-atom Top-K model decodes by gathering its active atoms (`sparse_decode`)."""
        if self.sparse_decode == "auto":
            return d_dict >= SPARSE_DECODE_MIN_RATIO * self.k
        return self.sparse_decode

    def dead_window_for(self, d_dict: int) -> int:
        """Samples without firing after which a latent of a `d_dict`-atom dictionary counts as dead."""
        if self.dead_after_fair_shares is None or self.activation != "topk":
            return self.dead_after_samples
        return min(self.dead_after_samples, math.ceil(self.dead_after_fair_shares * d_dict / self.k))

    @model_validator(mode="after")
    def _k_within_dictionary(self) -> TrainSection:
        if self.activation == "topk" and self.k > self.d_dict:
            raise ValueError(f"train.k={self.k} must be <= train.d_dict={self.d_dict}")
        for size in self.d_dict_sweep:
            if size < 1:
                raise ValueError(f"train.d_dict_sweep entries must be >= 1, got {size}")
            if self.activation == "topk" and self.k > size:
                raise ValueError(f"train.k={self.k} must be <= every train.d_dict_sweep entry ({size})")
        return self


class BaselinesSection(_Section):
    methods: list[Literal["pca", "ica", "nmf"]] = Field(["pca", "ica", "nmf"], description="Baselines fit.")
    n_components: list[int] = Field([8, 16, 32, 64], description="Component counts swept per baseline.")
    max_train_rows: int = Field(200_000, ge=1, description="Train rows subsampled for fitting.")
    max_iter: int = Field(400, ge=1, description="Iteration cap for ICA / NMF.")


class EvalSection(_Section):
    device: str = Field("auto", pattern=DEVICE_PATTERN, description=DEVICE_HELP + " sklearn probes stay on the CPU.")
    stability_subsamples: int = Field(2, ge=0, description="50% patient-subsample refits for stability.")
    stability_steps: int | None = Field(
        None, ge=1,
        description="Training steps of each subsample refit; None: the main model's own train.steps, so "
        "subsample refits and seed replicates have the same step budget.",
    )
    max_eval_rows: int | None = Field(None, ge=1, description="Cap on evaluated test rows (None: all).")
    probe_max_rows: int = Field(
        5000, ge=10,
        description="Windows (whole patients, seeded) the linear probes are fit on, from the train split; "
        "the same cap again for the held-out (val + test) patients they are scored on.",
    )
    n_bootstrap: int = Field(
        200, ge=10, description="Patient-bootstrap resamples for the CI of the phenotype AUROC increment.")
    chunk_rows: int = Field(8192, ge=1, description="Rows encoded per chunk while streaming metrics.")


class AgingSection(_Section):
    model: str = Field("full", description="ST-SAE variant whose concepts predict age.")
    cv_folds: int = Field(5, ge=2, description="GroupKFold folds for ElasticNetCV.")
    stability_selection: bool = Field(False, description="Run stability selection over concepts.")
    stability_rounds: int = Field(100, ge=1, description="Half-sample randomised-lasso paths in stability selection.")
    stability_threshold: float = Field(
        0.8, gt=0.5, le=1, description="pi_thr: max selection probability over the lambda path to keep a concept."
    )
    stability_pfer: float = Field(
        1.0, gt=0, description="Tolerated expected false selections; sets q by E[V] <= q^2/((2 pi_thr - 1) K)."
    )
    stability_weakness: float = Field(
        0.5, ge=0.2, le=0.8, description="Randomised lasso: each penalty weight is drawn from U[weakness, 1]."
    )
    bias_correction_on: Literal["validation", "oof_train"] = Field(
        "validation",
        description="Predictions the age-bias correction is fitted on (never test): validation, or nested "
        "out-of-fold train predictions (the whole ElasticNetCV fit rerun per fold; ~cv_folds x the fit cost).",
    )
    l1_ratios: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.5, 0.7, 0.9, 0.95, 1.0], min_length=1,
        description="ElasticNetCV l1_ratio grid, each in (0, 1] (1.0 = lasso; 0 has no automatic alpha path).",
    )
    n_alphas: int = Field(
        50, ge=2, description="ElasticNetCV path length per l1_ratio; also the stability-selection lambda path length."
    )
    min_events: int = Field(
        10, ge=1, description="Fewest cases and non-cases an HTN/T2D logistic regression needs; else skipped."
    )


class GroundingSection(_Section):
    top_concepts: int = Field(8, ge=1, description="Concepts grounded, ranked by age-predictor weight.")
    decile: float = Field(0.1, gt=0, lt=0.5, description="High/low fraction of windows per concept.")
    n_bootstrap: int = Field(200, ge=1, description="Bootstrap resamples for average-pulse bands.")
    beat_samples: int = Field(100, ge=10, description="Samples each aligned beat is resampled to.")
    max_windows: int = Field(5000, ge=1, description="Windows analysed for morphology (subsampled).")


class ReportSection(_Section):
    title: str = Field("ST-SAE vascular age report", description="Title of report.html.")


class Config(_Section):
    """The whole resolved configuration of one run."""

    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    extract: ExtractSection = Field(default_factory=ExtractSection)
    train: TrainSection = Field(default_factory=TrainSection)
    baselines: BaselinesSection = Field(default_factory=BaselinesSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    aging: AgingSection = Field(default_factory=AgingSection)
    grounding: GroundingSection = Field(default_factory=GroundingSection)
    report: ReportSection = Field(default_factory=ReportSection)


def _valid_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for typo suggestions."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}).keys())


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    if first["type"] == "extra_forbidden":
        valid = _valid_keys(Config, loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
        return f"{source}: unknown config key '{key}'{hint}"
    if first["type"] == "value_error" and loc and str(loc[0]) in Config.model_fields:
        return f"{source}: {_clip(first['msg'].removeprefix('Value error, '))}"  # a section's own check
    return f"{source}: invalid value for '{key}': {_clip(first['msg'])} (got {echo(first.get('input'))})"


def _clip(text: str) -> str:
    """First line of `text`, at most ~200 characters."""
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= _ECHO_CHARS else f"{line[:_ECHO_CHARS]}..."


def echo(value: Any) -> str:
    """A user value as an error message shows it: repr, bounded in depth and length (never huge)."""
    return _clip(_ECHO.repr(value))


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {echo(text)}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key.strip()}: value {echo(raw)} is not valid YAML "
                          f"({_clip(str(exc))})") from None
    return key.strip().split("."), value


def _apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `section.key=value` overrides, validate, and return it.

    Raises ConfigError with a one-line message naming the offending key.
    """
    tree: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}); save the file as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_clip(str(exc))})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        tree = loaded or {}
    for text in overrides or []:
        _apply_override(tree, *_parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def config_to_yaml(config: Config) -> str:
    """Serialise a config to YAML (paths as strings) so it can be reloaded with `load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
