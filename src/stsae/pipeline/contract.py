"""What a stage promises, declared beside its `run`: the config it reads, its upstream stages, its outputs.

Each `stsae/stages/<name>.py` defines `CONTRACT = StageContract(...)` next to `def run(ctx)`. The runner
builds the stage graph from these declarations, fingerprints exactly the declared config keys, and hands
the stage a read-only view of the config that refuses every key the contract does not declare, so the
fingerprint can never miss a setting the stage actually uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from stsae.config import Config
from stsae.errors import StsaeError
from stsae.pipeline.manifest import update_manifest
from stsae.rundir import RunDir


class UndeclaredConfigReadError(StsaeError, AttributeError):
    """A stage read a config key its CONTRACT does not list in `reads` (a bug in the stage, not user input)."""


@dataclass(frozen=True)
class StageContract:
    """One stage's declaration.

    name: the CLI subcommand; help: its one-line description.
    reads: dotted config keys the stage reads (a section name covers the whole section).
    inputs: config keys naming files or directories outside the run directory that the stage reads
        (encoder weights, data roots, clinical tables); their identity enters the fingerprint.
    upstream: stages whose outputs this stage reads.
    out_dir: folder under the run directory holding its outputs and its `stage.json`.
    extra_outputs: `RunDir` properties of output files outside `out_dir` (e.g. `report_html`).
    scratch: sub-folders of `out_dir` that are not outputs (resumable state, set-aside files).
    multi_rank: the stage shares its work between torchrun ranks (prepare, extract, train), so every rank
        runs it; any other stage runs on rank 0 alone (a second rank would only repeat its work).
    """

    name: str
    help: str
    reads: tuple[str, ...]
    upstream: tuple[str, ...]
    out_dir: str
    inputs: tuple[str, ...] = ()
    extra_outputs: tuple[str, ...] = ()
    scratch: tuple[str, ...] = ()
    multi_rank: bool = False

    def __post_init__(self) -> None:
        undeclared = [key for key in self.inputs if not covers(self.reads, key)]
        if undeclared:
            raise ValueError(f"stage {self.name!r}: inputs {undeclared} must also be listed in reads")


def covers(reads: tuple[str, ...], dotted: str) -> bool:
    """True when `dotted` is one of `reads` or lies inside one of them."""
    return any(dotted == key or dotted.startswith(key + ".") for key in reads)


def config_slice(config: Config, reads: tuple[str, ...]) -> dict[str, Any]:
    """The JSON values of exactly the declared keys: what a stage's fingerprint hashes."""
    dumped = config.model_dump(mode="json")
    result: dict[str, Any] = {}
    for key in reads:
        node: Any = dumped
        for part in key.split("."):
            node = node[part]
        result[key] = node
    return result


class ConfigView:
    """Read-only view of a Config that allows only the keys a stage declared.

    Attribute access walks the config; a declared key (or anything inside it) returns the real value,
    a prefix of a declared key returns a narrower view, anything else raises UndeclaredConfigReadError
    naming the stage and the key.
    """

    __slots__ = ("_node", "_path", "_reads", "_stage")

    def __init__(self, node: BaseModel, reads: tuple[str, ...], stage: str, path: str = ""):
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        dotted = f"{self._path}.{name}" if self._path else name
        value = getattr(self._node, name)
        if covers(self._reads, dotted):
            return value
        if isinstance(value, BaseModel) and any(key.startswith(dotted + ".") for key in self._reads):
            return ConfigView(value, self._reads, self._stage, dotted)
        raise UndeclaredConfigReadError(
            f"stage '{self._stage}' read config key '{dotted}' which its CONTRACT.reads does not declare")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"stage '{self._stage}': the config is read-only")


def restricted(config: Config, contract: StageContract) -> Config:
    """`config` as the stage may see it (typed as Config: the view answers the same attribute reads)."""
    return cast(Config, ConfigView(config, contract.reads, contract.name))


@dataclass
class StageContext:
    """What a stage function receives.

    config: the config (under the runner, a view limited to the stage's declared reads);
    fingerprint: this stage's provenance fingerprint; upstream: the fingerprints of its upstream stages
    (a model records the extract fingerprint it was trained on); force: rerun everything the stage owns.
    """

    config: Config
    run_dir: RunDir
    fingerprint: str
    force: bool = False
    upstream: Mapping[str, str] = field(default_factory=dict)

    def record(self, key: str, value: Any) -> None:
        """Add a fact to manifest.json (e.g. encoder weights sha256 or RANDOM)."""
        update_manifest(self.run_dir.manifest, {key: value})
