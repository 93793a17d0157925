"""A real, minimal source run for the apply/transfer tests: tests/configs/tiny.yaml shrunk to one ST-SAE
and one baseline, run through the stages apply needs (prepare … age) in-process (≈ 10 s on one core)."""

from __future__ import annotations

from pathlib import Path

from stsae.config import Config, load_config
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
SMALL = ["train.ablations=[]", "train.d_dict_sweep=[64]", "train.seeds=[0]", "baselines.methods=[pca]",
         "baselines.n_components=[4]"]
SOURCE_STAGES = ["prepare", "extract", "train", "baselines", "age"]


def tiny_config(*overrides: str) -> Config:
    return load_config(TINY, [*SMALL, *overrides])


def write_config(path: Path, *overrides: str) -> Path:
    """tiny.yaml + SMALL + overrides as one YAML file (what `--config` takes)."""
    from stsae.config import config_to_yaml

    path.write_text(config_to_yaml(tiny_config(*overrides)))
    return path


def build_source_run(root: Path, *overrides: str) -> RunDir:
    run_dir = RunDir(root)
    run_stages(StageContext(tiny_config(*overrides), run_dir, fingerprint=""), SOURCE_STAGES)
    return run_dir
