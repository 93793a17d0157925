"""Paths of one run directory (DESIGN §3), so no stage spells another stage's file names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The layout of `runs/<name>/`. Stages read upstream paths and write only their own."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # top level
    @property
    def config_resolved(self) -> Path:
        return self.root / "config.resolved.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def lock(self) -> Path:
        """flock'ed while a run writes; its presence also marks the directory as an stsae run."""
        return self.root / ".stsae.lock"

    @property
    def hash_cache(self) -> Path:
        """sha256 of external input files keyed by path + size + mtime_ns (hashed once, not every run)."""
        return self.root / ".sha256-cache.json"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    # windows/ (prepare)
    @property
    def windows_dir(self) -> Path:
        return self.root / "windows"

    @property
    def windows(self) -> Path:
        """float32[N, 1250] memmap of preprocessed 10 s windows at 125 Hz."""
        return self.windows_dir / "windows.npy"

    @property
    def meta(self) -> Path:
        """One row per window: window_id, patient_id, record_id, segment_idx, t_start_s, ... split."""
        return self.windows_dir / "meta.parquet"

    @property
    def qc(self) -> Path:
        """One row per window: window_id, qc_pass, qc_reason."""
        return self.windows_dir / "qc.parquet"

    @property
    def splits(self) -> Path:
        """One row per patient: patient_id, split."""
        return self.windows_dir / "splits.parquet"

    # embeddings/ (extract)
    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def z(self) -> Path:
        """float32[M, 512] PaPaGei-S embeddings of QC-passed windows, rows as in index.parquet."""
        return self.embeddings_dir / "z.npy"

    @property
    def z_aug(self) -> Path:
        """float32[M, 512] embeddings of the augmented windows, same rows as z.npy."""
        return self.embeddings_dir / "z_aug.npy"

    @property
    def z_aug_heldout(self) -> Path:
        """float32[M, 512] embeddings under the held-out augmentation families (never trained against)."""
        return self.embeddings_dir / "z_aug_heldout.npy"

    @property
    def index(self) -> Path:
        """Row r of z.npy: window_id, patient_id, record_id, segment_idx, split."""
        return self.embeddings_dir / "index.parquet"

    # models/ (train, baselines)
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def baselines_dir(self) -> Path:
        return self.models_dir / "baselines"

    def baseline(self, method: str, n_components: int) -> Path:
        """safetensors arrays of a fitted baseline; a `.json` with method and parameters sits beside it."""
        return self.baselines_dir / f"{method}-n{n_components}.safetensors"

    def stsae_checkpoint(self, variant: str, d_dict: int, seed: int) -> Path:
        """safetensors weights; a `.json` with config and metrics sits beside it."""
        return self.models_dir / f"stsae-{variant}-K{d_dict}-s{seed}.safetensors"

    @property
    def train_checkpoints_dir(self) -> Path:
        """Resumable training state of unfinished models (kept apart so the registry never lists it)."""
        return self.models_dir / "checkpoints"

    @property
    def stale_models_dir(self) -> Path:
        """Models of an earlier grid, config or embeddings, set aside (kept, never listed)."""
        return self.models_dir / "stale"

    # eval/, aging/, grounding/, figures/
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def leaderboard(self) -> Path:
        return self.eval_dir / "leaderboard.json"

    @property
    def pareto(self) -> Path:
        return self.eval_dir / "pareto.json"

    @property
    def aging_dir(self) -> Path:
        return self.root / "aging"

    @property
    def predictions(self) -> Path:
        return self.aging_dir / "predictions.parquet"

    @property
    def delta_age(self) -> Path:
        return self.aging_dir / "delta_age.parquet"

    @property
    def age_model(self) -> Path:
        return self.aging_dir / "age_model.json"

    @property
    def associations(self) -> Path:
        return self.aging_dir / "associations.json"

    @property
    def grounding_dir(self) -> Path:
        return self.root / "grounding"

    @property
    def concept_pulses(self) -> Path:
        return self.grounding_dir / "concept_pulses.npz"

    @property
    def morphology(self) -> Path:
        return self.grounding_dir / "morphology.parquet"

    @property
    def concept_morphology(self) -> Path:
        return self.grounding_dir / "concept_morphology.csv"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def figure_index(self) -> Path:
        """Every figure with its title, caption, and whether it was drawn (or why not)."""
        return self.figures_dir / "index.json"
