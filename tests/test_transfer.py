"""`stsae transfer`: A's frozen age model on B vs a refit on B, Δage odds ratios, concept firing shift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apply_runs import build_source_run, write_config
from stsae.apply.layout import AppliedDir
from stsae.apply.transfer import firing_shift
from stsae.cli import app
from stsae.rundir import RunDir
from stsae.utils import io

runner = CliRunner()
SITE_B = ["data.synthetic.fs=100.0", "data.synthetic.noise_std=0.08", "data.synthetic.n_patients=30"]


def test_firing_shift_counts_exactly_the_planted_changes() -> None:
    a = np.array([0.10, 0.10, 0.10, 0.00, 0.30, 0.0])
    b = np.array([0.15, 0.25, 0.04, 0.20, 0.30, 0.0])  # ×1.5, ×2.5, ÷2.5, new, same, never live
    shift = firing_shift(a, b)
    assert shift["n_live"] == 5
    assert shift["shifted_concepts"] == [1, 2, 3]
    assert shift["fraction_shifted"] == pytest.approx(3 / 5)


def test_firing_shift_of_one_site_against_itself_is_zero() -> None:
    rates = np.random.default_rng(0).uniform(0, 0.5, 32)
    assert firing_shift(rates, rates)["fraction_shifted"] == 0.0


def test_firing_shift_without_live_concepts_is_null() -> None:
    assert firing_shift(np.zeros(4), np.zeros(4))["fraction_shifted"] is None


def _transfer(root: Path, *target: str) -> dict:
    source = build_source_run(root / "A")
    result = runner.invoke(app, ["transfer", "--source", str(source.root), "-q", "--run-dir", str(root / "B"),
                                 "--target-config", str(write_config(root / "b.yaml", *target))])
    assert result.exit_code == 0, result.output
    return io.read_json(AppliedDir(RunDir(root / "B")).transfer)


@pytest.mark.slow
def test_transfer_to_the_source_cohort_costs_nothing(tmp_path: Path) -> None:
    report = _transfer(tmp_path)
    assert report["age"]["mae_gap_years"] == 0.0
    assert report["concept_shift"]["fraction_shifted"] == 0.0


@pytest.mark.slow
def test_transfer_numbers_on_a_second_site_are_present_and_finite(tmp_path: Path) -> None:
    report = _transfer(tmp_path, *SITE_B)
    frozen, refit = report["age"]["frozen_source_model"]["test"], report["age"]["refit_on_target"]["test"]
    values = [frozen["mae"], frozen["r"], refit["mae"], refit["r"], report["age"]["mae_gap_years"],
              report["concept_shift"]["fraction_shifted"]]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert frozen["n"] == refit["n"] >= 3
    assert len(report["concept_shift"]["rate_target"]) == report["concept_shift"]["n_concepts"] == 64
    assert set(report["delta_age_associations"]["frozen_source_model"]) == {"htn", "t2d"}
    assert 'id="transfer"' in (tmp_path / "B" / "report.html").read_text()
