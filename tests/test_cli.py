"""CLI surface: --help everywhere, one-line user errors with exit code 2."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stsae.cli import app
from stsae.pipeline.runner import STAGES

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.mark.parametrize("command", [s.name for s in STAGES] + ["simulate", "run"])
def test_every_subcommand_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output and "--run-dir" in result.output and "--set" in result.output


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("0[1-7]_*.py")))
def test_every_legacy_script_has_help(script):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Equivalent to: `stsae" in result.stdout


@pytest.mark.parametrize("script", ["run_pipeline.sh", "00_setup_papagei.sh"])
def test_shell_wrappers_have_help(script):
    result = subprocess.run(["bash", str(REPO / "scripts" / script), "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_config_typo_is_one_line_and_exit_code_2(tmp_path):
    result = runner.invoke(app, ["prepare", "--run-dir", str(tmp_path / "r"), "--set", "train.lrr=1"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: config: unknown config key 'train.lrr' (did you mean 'train.lr'?)"
    )
    assert not (tmp_path / "r").exists()


def test_run_pipeline_rejects_unknown_source():
    result = subprocess.run(["bash", str(REPO / "scripts" / "run_pipeline.sh")], env={"SOURCE": "bogus",
                            "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "SOURCE must be synthetic" in result.stderr


def test_disk_full_is_one_line_and_exit_code_2(tmp_path, monkeypatch):
    from stsae.stages import prepare as prepare_stage

    def no_space(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "windows.npy.tmp")

    monkeypatch.setattr(prepare_stage.NpyRowWriter, "append", no_space)
    result = runner.invoke(app, ["prepare", "--run-dir", str(tmp_path / "r"), "--set", "data.synthetic.n_patients=6",
                                 "--set", "data.synthetic.minutes_per_record=0.5"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: No space left on device writing windows.npy.tmp; earlier outputs are intact, free space and rerun"
    )
