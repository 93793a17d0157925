"""The stage graph: what each stage depends on (config sections and upstream stages) and where it lives.

A stage's fingerprint hashes the config sections it reads and its upstream stages' fingerprints, so
changing one hyperparameter reruns exactly the stages downstream of it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    out_dir: str
    entry: str

    @property
    def module(self) -> str:
        return self.entry.split(":")[0]


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "Simulate or load raw PPG, window it, QC it, split patients.",
          ("run.seed", "data"), (), "windows", "stsae.stages.prepare:run"),
    Stage("extract", "Encode windows and augmented windows with PaPaGei-S into z.npy / z_aug.npy.",
          ("run.seed", "encoder", "extract", "data.augment"), ("prepare",), "embeddings",
          "stsae.stages.extract:run"),
    Stage("train", "Train the ST-SAE grid: full, five ablations, K-sweep, seeds.",
          ("run.seed", "train"), ("extract",), "models", "stsae.stages.train:run"),
    Stage("baselines", "Fit PCA / ICA / NMF on the train split.",
          ("run.seed", "baselines"), ("extract",), "models/baselines", "stsae.stages.baselines:run"),
    Stage("evaluate", "Score every model on the test split; write leaderboard and Pareto front.",
          ("run.seed", "eval"), ("train", "baselines"), "eval", "stsae.stages.evaluate:run"),
    Stage("age", "Predict age from concepts; bias-corrected delta-age; HTN/T2D associations.",
          ("run.seed", "aging"), ("train", "baselines"), "aging", "stsae.stages.age:run"),
    Stage("ground", "Ground top concepts in pulse morphology.",
          ("run.seed", "grounding"), ("age",), "grounding", "stsae.stages.ground:run"),
    Stage("figures", "Draw every figure (PNG + SVG).",
          (), ("evaluate", "age", "ground"), "figures", "stsae.stages.figures:run"),
    Stage("report", "Write the self-contained report.html.",
          ("report",), ("figures",), "report", "stsae.stages.report:run"),
)

STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
