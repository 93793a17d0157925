"""Run A as a source of frozen models: its recorded config, encoder identity, main ST-SAE and age model.

Why a compatibility check: A's concepts and age model are only meaningful on embeddings made the way A
made them. The same encoder weights (sha256; a RANDOM encoder is fixed by run.seed) and the same
windowing and band-pass must produce B's windows, or B's concepts would differ for reasons that are
the pipeline's, not the cohort's. Anything else (source, QC thresholds, splits) may differ by site.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stsae.aging.age_pred import AgePredictor, BiasCorrection, age_predictor_from_record
from stsae.config import Config, load_config
from stsae.errors import InputDataError, StsaeError
from stsae.models.registry import ConceptModel, list_models, load_concept_model
from stsae.pipeline.runner import STAGE_BY_NAME, fingerprint, stale_reason
from stsae.rundir import RunDir
from stsae.stages.age import concept_model_info
from stsae.train.grid import main_entry
from stsae.utils import io

RANDOM_ENCODER = "RANDOM"


class IncompatibleSourceError(StsaeError):
    """The target config would not make embeddings the way the source run made them."""


@dataclass(frozen=True)
class SourceRun:
    """Run A as recorded: its resolved config and manifest."""

    run_dir: RunDir
    config: Config
    manifest: dict[str, Any]

    @property
    def encoder_sha256(self) -> str:
        encoder = self.manifest.get("encoder")
        if not isinstance(encoder, dict) or "sha256" not in encoder:
            raise InputDataError(f"{self.run_dir.manifest}: no encoder.sha256 (run `stsae extract` there first)")
        return str(encoder["sha256"])


@dataclass(frozen=True)
class FrozenModels:
    """A's main ST-SAE, its age model with the frozen bias correction, and their identities."""

    concept_model: ConceptModel
    predictor: AgePredictor
    correction: BiasCorrection
    age_model_sha256: str


def read_source(root: Path) -> SourceRun:
    """Run A's config.resolved.yaml and manifest.json; a one-line error naming the missing file."""
    run_dir = RunDir(root)
    for path in (run_dir.config_resolved, run_dir.manifest):
        if not path.is_file():
            raise InputDataError(f"{path}: missing; the source run (--from-run / --source) must be a finished run")
    return SourceRun(run_dir, load_config(run_dir.config_resolved), io.read_json(run_dir.manifest))


def target_encoder_sha256(config: Config) -> str:
    """The encoder identity extract would record for `config`, computed before anything is extracted."""
    if config.encoder.weights is None:
        return RANDOM_ENCODER
    if not Path(config.encoder.weights).is_file():
        raise InputDataError(f"encoder.weights: {config.encoder.weights} does not exist")
    return io.file_sha256(Path(config.encoder.weights))


def _differing_key(prefix: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            return f"{prefix}.{key}"
    return None


def check_compatible(source: SourceRun, target: Config) -> None:
    """Refuse (IncompatibleSourceError naming the config key) a target that would embed differently from A."""
    sha = target_encoder_sha256(target)
    if sha != source.encoder_sha256:
        raise IncompatibleSourceError(
            f"encoder.weights: sha256 {sha[:12]} differs from the source run's {source.encoder_sha256[:12]} "
            f"({source.run_dir.manifest}); use the encoder run A was extracted with")
    if sha == RANDOM_ENCODER and target.run.seed != source.config.run.seed:
        raise IncompatibleSourceError(
            f"run.seed: {target.run.seed} differs from the source run's {source.config.run.seed}; with random "
            "encoder weights the seed fixes the encoder, so it must match")
    key = _differing_key("data.windowing", target.data.windowing.model_dump(mode="json"),
                        source.config.data.windowing.model_dump(mode="json"))
    if key is not None:
        raise IncompatibleSourceError(
            f"{key}: differs from the source run's {source.run_dir.config_resolved} "
            "(windowing and band-pass must match run A's preprocessing)")


def load_frozen_models(source: SourceRun) -> FrozenModels:
    """A's concept model (the age model's: `aging.model` at main_entry's K and seed, through the registry)
    and its age model and bias correction as the age stage saved them; refused unless A's age stage is up
    to date (its outputs unchanged since it ran, on the current models), so the files belong together."""
    run_dir, config = source.run_dir, source.config
    for path in (run_dir.age_model, run_dir.associations):
        if not path.is_file():
            raise InputDataError(f"{path}: missing (run `stsae age` on the source run first)")
    age_stage = STAGE_BY_NAME["age"]
    stale = stale_reason(run_dir, age_stage, fingerprint(config, run_dir, age_stage))
    if stale is not None:
        raise InputDataError(f"{run_dir.aging_dir}: the source run's age stage is not up to date ({stale}); "
                             f"run `stsae run` on {run_dir.root} first")
    record = io.read_json(run_dir.age_model)
    main = main_entry(config.train)
    info = concept_model_info(list_models(run_dir, config.baselines), config.aging.model, main.d_dict, main.seed)
    if record.get("model") != info.name:
        raise InputDataError(f"{run_dir.age_model}: model {record.get('model')!r} is not the run's concept model "
                             f"{info.name} (rerun `stsae age` there)")
    correction = io.read_json(run_dir.associations).get("bias_correction") or {}
    try:
        frozen = BiasCorrection(slope=float(correction["slope"]), intercept=float(correction["intercept"]),
                                fitted_on=str(correction["fitted_on"]))
    except (KeyError, TypeError, ValueError):
        raise InputDataError(f"{run_dir.associations}: bias_correction lacks slope/intercept/fitted_on") from None
    return FrozenModels(load_concept_model(info.path), age_predictor_from_record(record, str(run_dir.age_model)),
                        frozen, io.file_sha256(run_dir.age_model))
