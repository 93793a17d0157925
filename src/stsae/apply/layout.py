"""Paths an applied run writes under `<run>/applied/` (docs/CONTRACTS.md "apply"), named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stsae.rundir import RunDir


@dataclass(frozen=True)
class AppliedDir:
    """Run B's outputs of `stsae apply` / `stsae transfer`, beside B's own windows/ and embeddings/."""

    run_dir: RunDir

    @property
    def root(self) -> Path:
        return self.run_dir.root / "applied"

    @property
    def codes(self) -> Path:
        """Sparse per-window activations of A's concept model: CSR arrays in an npz."""
        return self.root / "codes.npz"

    @property
    def predictions(self) -> Path:
        """One row per patient of B: A's age model's prediction, its corrected value and Δage."""
        return self.root / "predictions.parquet"

    @property
    def contributions(self) -> Path:
        """Long table: patient_id, concept, contribution_years (A's selected concepts)."""
        return self.root / "contributions.parquet"

    @property
    def associations(self) -> Path:
        return self.root / "associations.json"

    @property
    def firing_rates(self) -> Path:
        """float64[K] fraction of B's windows on which each concept fires (npy)."""
        return self.root / "firing_rates.npy"

    @property
    def transfer(self) -> Path:
        return self.root / "transfer.json"
