"""The `ground` stage: average pulses, morphology and concept × morphology statistics → grounding/.

Windows: a seeded subsample of at most `grounding.max_windows` QC-passed windows (all splits: grounding
describes the concepts, it fits nothing). Concepts: the `grounding.top_concepts` largest |coefficients|
of the age model in aging/age_model.json, encoded with the same concept model. Windows are read at
`data.windowing.fs_target` (the rate windows.npy is written at; the prepare fingerprint upstream covers it).
Per concept: highest decile, lowest active decile and a silent sample across patients, each with a
patient (cluster) bootstrap band; the concept × morphology table is Spearman over patient means. Ties and
samples draw from `run.seed` (stsae.utils.seeding), one named stream per concept.
"""

from __future__ import annotations

import logging

import numpy as np

from stsae.data.dataset import read_rows
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.grounding.beats import average_pulses
from stsae.grounding.concepts import (
    GROUPS,
    ConceptGrounding,
    correlate_concepts_with_morphology,
    ground_concept,
    top_concepts_by_weight,
)
from stsae.grounding.morphology import FEATURES, morphology_table
from stsae.models.registry import list_models, load_concept_model
from stsae.pipeline.contract import StageContext, StageContract
from stsae.utils import io
from stsae.utils.seeding import rng

log = logging.getLogger(__name__)


def concept_pulse_arrays(groundings: list[ConceptGrounding], beat_samples: int) -> dict[str, np.ndarray]:
    """The concept_pulses.npz arrays (docs/CONTRACTS.md) of C groundings: per group in GROUPS
    `<group>_mean/_lo/_hi` float32[C, L] and `n_<group>` int64[C]; `morphology_diff` and
    `morphology_diff_silent` float64[C, F] in FEATURES order."""
    arrays: dict[str, np.ndarray] = {}
    for group in GROUPS:
        bands = [getattr(g, group) for g in groundings]
        for stat in ("mean", "lo", "hi"):
            stacked = [getattr(band, stat) for band in bands]
            arrays[f"{group}_{stat}"] = (np.stack(stacked) if stacked
                                         else np.zeros((0, beat_samples), dtype=np.float32))
        arrays[f"n_{group}"] = np.array([len(band.rows) for band in bands], dtype=np.int64)
    for key in ("morphology_diff", "morphology_diff_silent"):
        arrays[key] = np.array([[getattr(g, key)[f] for f in FEATURES] for g in groundings],
                               dtype=np.float64).reshape(len(groundings), len(FEATURES))
    return arrays





CONTRACT = StageContract(
    name="ground", help="Ground top concepts in pulse morphology.",
    reads=("run.seed", "grounding", "data.windowing.fs_target", "baselines.methods",
           "baselines.n_components"), upstream=("age",), out_dir="grounding")


def run(ctx: StageContext) -> None:
    config, run_dir = ctx.config, ctx.run_dir
    grounding, seed = config.grounding, config.run.seed
    age_model = io.read_json(run_dir.age_model)
    infos = {info.name: info for info in list_models(run_dir, config.baselines)}
    if age_model.get("model") not in infos:
        raise InputDataError(f"{run_dir.age_model}: model {age_model.get('model')!r} is not in models/")
    model = load_concept_model(infos[age_model["model"]].path)
    coef = np.asarray(age_model["coef"], dtype=np.float64)
    concepts = top_concepts_by_weight(coef, grounding.top_concepts)
    if len(concepts) == 0:
        log.warning("the age model has no nonzero coefficient: no concept to ground")

    embeddings = load_embeddings(run_dir)
    n_rows = len(embeddings.index)
    rows = np.sort(
        rng(seed, "ground", "windows").choice(n_rows, size=min(n_rows, grounding.max_windows), replace=False)
    )
    window_ids = embeddings.index["window_id"].to_numpy(dtype=np.int64)[rows]
    windows = io.open_memmap_rows(run_dir.windows)
    if window_ids.max(initial=-1) >= windows.shape[0]:
        raise InputDataError(
            f"{run_dir.index}: window_id {window_ids.max()} beyond {run_dir.windows.name} rows"
        )
    fs = config.data.windowing.fs_target
    # positioned reads, not the mappings: a few thousand random rows through the memmap kept 4.5 GiB of
    # windows.npy's pages resident at 1M windows (read-around), past the 4 GiB bound
    pulses = average_pulses(read_rows(windows, window_ids), fs, grounding.beat_samples)
    morphology = morphology_table(pulses.pulses, pulses.period_s, pulses.reason)
    activations = model.encode(np.asarray(read_rows(embeddings.z, rows), dtype=np.float32))[:, concepts]

    patients = embeddings.index["patient_id"].astype(str).to_numpy()[rows]
    groundings = [
        ground_concept(
            int(c),
            activations[:, j],
            pulses.pulses,
            morphology,
            patients,
            decile=grounding.decile,
            n_bootstrap=grounding.n_bootstrap,
            rng=rng(seed, "ground", "bootstrap", int(c)),
        )
        for j, c in enumerate(concepts)
    ]
    with io.atomic_path(run_dir.concept_pulses) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, concepts=concepts, features=np.array(FEATURES),
                 **concept_pulse_arrays(groundings, grounding.beat_samples))
    io.write_parquet(
        run_dir.morphology, morphology.assign(window_id=window_ids)[["window_id", *FEATURES, "reason"]]
    )
    table = correlate_concepts_with_morphology(activations, concepts, morphology, patients)
    with io.atomic_open(run_dir.concept_morphology) as handle:
        table.to_csv(handle, index=False)
    log.info(
        "grounded %d concepts on %d windows (%d without a pulse)",
        len(concepts),
        len(rows),
        int((pulses.reason != "").sum()),
    )
