"""The leaderboard and Pareto files of the evaluate stage: `LeaderboardRow`, its JSON form and their table.

A row is one model's scores. evaluate creates it with the identity filled in and every metric None and
fills the metrics; a metric that could not be computed stays None with its reason in `reasons` (metric
key -> why), so the report never has to guess. Readers get rows back through `read_leaderboard_rows`,
which checks every field's presence and JSON type once, so no reader re-checks a value's type.
"""

from __future__ import annotations

import copy
import logging
import math
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from io import StringIO
from pathlib import Path
from typing import Any, TypedDict, get_args, get_origin, get_type_hints, is_typeddict

from rich.console import Console
from rich.table import Table

from stsae.errors import InputDataError
from stsae.eval.pareto import pareto_frontier
from stsae.utils import io

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: within-record lag-1, held-out consistency and probes, live-atom stability, is_main
REASONS_KEY = "reasons"
_JSON_NAME = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
              type(None): "null"}


class ProbeEntry(TypedDict, total=False):
    """One factor's held-out probe. `metric`, `value` and `raw_value` always; the phenotypes (htn, t2d)
    also the age + sex adjusted scores, when age, sex and both classes are present on each side."""

    metric: str
    """"r2" (continuous factors) or "auroc" (binary labels)."""
    value: float | None
    """The probe on the model's codes."""
    raw_value: float | None
    """The same probe on the raw 512-d embeddings: the reference."""
    age_sex_value: float | None
    """AUROC of age + sex alone."""
    adjusted_value: float | None
    """Codes + age + sex (covariates unpenalised)."""
    raw_adjusted_value: float | None
    """Raw z + age + sex."""
    increment: float | None
    """adjusted_value − age_sex_value."""
    increment_ci: list[float] | None
    """[low, high]: 95 % patient-bootstrap CI of the increment (eval.n_bootstrap resamples), or None."""


class SingleConcept(TypedDict):
    """The concept chosen on train patients for one factor and its |r| on held-out patients."""

    concept: int
    abs_r: float


@dataclass(slots=True, kw_only=True)
class LeaderboardRow:
    """One model's row of eval/leaderboard.json; every attribute is one JSON key of the row.

    Slotted, so a misspelt metric name is an AttributeError instead of a silent new key. The JSON key
    of `d_dict` is "K" (the file format predates the name every other record uses). Test-split metrics
    are measured on the `n_test_windows` evaluated test windows; None means not computed, and then
    `reasons` says why.
    """

    model: str
    """File stem of the model; a dense baseline and its matched-sparsity row share it."""
    family: str
    """stsae, pca, ica or nmf."""
    variant: str
    """The ST-SAE variant (full or an ablation), or the baseline's method."""
    d_dict: int
    """K, the number of concepts (atoms)."""
    seed: int | None
    """Training seed."""
    matched_sparsity: bool = False
    """True for a baseline's k-sparse row: codes re-encoded on its own dictionary with k = k_active."""
    k_active: int | None = None
    """k of a matched-sparsity row: the main model's L0, rounded (None on every other row)."""
    is_main: bool = False
    """The row of the one main model (`stsae.train.grid.main_entry`: full at train.d_dict, first of
    train.seeds), so readers of the rows alone find it without re-deriving the choice."""
    ev: float | None = None
    """Explained variance 1 − Σ‖z − ẑ‖² / Σ‖z − z̄‖² (z̄: the train mean)."""
    l0: float | None = None
    """Mean number of active concepts per window."""
    dead_fraction_train: float | None = None
    """Fraction of latents silent over the last `dead_window_samples` training samples (Gao et al.), from
    the ST-SAE sidecar; None for baselines and before that many samples were seen."""
    dead_window_samples: int | None = None
    """N of `dead_fraction_train` (train.dead_after_samples, or shorter by train.dead_after_fair_shares)."""
    never_fired_test_fraction: float | None = None
    """Fraction of atoms inactive on all `n_test_windows` evaluated windows."""
    n_test_windows: int | None = None
    """Test windows evaluated (whole patients, capped by eval.max_eval_rows)."""
    consistency_jaccard: float | None = None
    """Mean Jaccard of the active sets of f(z) and f(z_aug) (the augmentations L_stab trained on)."""
    consistency_cosine: float | None = None
    """Mean cosine of f(z) and f(z_aug)."""
    consistency_heldout_aug: float | None = None
    """Mean Jaccard of f(z) and f(z_aug_heldout): augmentation families never trained against."""
    lag1_within_record: float | None = None
    """Primary temporal metric: concepts demeaned within each gap-free record, adjacent-pair minus
    non-adjacent-pair correlation, variance-weighted; 0 without serial dependence
    (`stsae.eval.temporal.WithinRecordLag1`)."""
    between_record_variance_share: float | None = None
    """1 − within-record / total sum of squares of the codes."""
    lag1_pooled: float | None = None
    """Lag-1 correlation pooled over all temporal pairs, variance-weighted: mostly between-record
    variance, kept for comparison."""
    lag1_pooled_unweighted: float | None = None
    """The same as a plain mean over concepts."""
    seed_stability_mean_cos: float | None = None
    """ST-SAE rows: mean Hungarian-matched cosine of live atoms (fired on a test window) against the
    other seeds of the same variant and K."""
    seed_stability_frac_07: float | None = None
    """Share of those matched cosines ≥ 0.7."""
    seed_stability_frac_09: float | None = None
    """Share ≥ 0.9."""
    subsample_stability_mean_cos: float | None = None
    """Main model only: the same against eval.stability_subsamples refits on 50 % train-patient
    subsamples, with the main model's step budget unless eval.stability_steps."""
    subsample_stability_frac_07: float | None = None
    """Share of those matched cosines ≥ 0.7."""
    subsample_stability_frac_09: float | None = None
    """Share ≥ 0.9."""
    stability_live_atoms: int | None = None
    """Live atoms the stability numbers match."""
    stability_null_data_mean_cos: float | None = None
    """Data-aware null: two untrained dictionaries from the trainer's own initialisation (different
    seeds), subsampled to the same live counts."""
    stability_null_data_frac_07: float | None = None
    """Share of the null's matched cosines ≥ 0.7."""
    stability_null_isotropic_mean_cos: float | None = None
    """Isotropic null: random unit vectors, same counts."""
    probe: dict[str, ProbeEntry] = field(default_factory=dict)
    """Factor -> held-out ridge probe (`ProbeEntry`): fit on train patients, scored on val + test
    patients, each side capped at eval.probe_max_rows by whole patients."""
    single_concept: dict[str, SingleConcept] = field(default_factory=dict)
    """Factor -> the best single concept (`SingleConcept`)."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Metric key (`probe.<factor>` for a probe) -> why it is None."""

    def skip(self, keys: Iterable[str], reason: str) -> None:
        """Set the metrics `keys` to None and record why."""
        for key in keys:
            setattr(self, key, None)
            self.reasons[key] = reason

    def assign(self, keys: Iterable[str], values: Iterable[float | int | None]) -> None:
        """Set the metrics `keys` to `values`, pairwise: a group of fields filled from one result."""
        for key, value in zip(keys, values, strict=True):
            setattr(self, key, value)

    def to_json(self) -> dict[str, Any]:
        """The row as leaderboard.json stores it (JSON keys, in file order)."""
        return {_JSON_KEY[f.name]: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> LeaderboardRow:
        """The row stored as `data`; a missing, unknown or mistyped field is an InputDataError naming
        `where` (file and row) and the field."""
        if not isinstance(data, dict):
            raise InputDataError(f"{where}: not a JSON object")
        unknown = [key for key in data if key not in _FIELD_OF]
        missing = [key for key in _FIELD_OF if key not in data]
        for problem, keys in (("unknown", unknown), ("missing", missing)):
            if keys:
                raise InputDataError(f"{where}: {problem} field(s) {', '.join(map(repr, keys))} (written by "
                                     "another stsae version? rerun `stsae evaluate --force`)")
        for key, value in data.items():
            _check_type(f"{where}: field {key!r}", value, _ACCEPTS[_FIELD_OF[key]])
            for name, entry in value.items() if isinstance(value, dict) else ():
                _check_type(f"{where}: field {key!r}[{name!r}]", entry, _ENTRY_ACCEPTS[_FIELD_OF[key]])
        return cls(**{_FIELD_OF[key]: copy.deepcopy(value) for key, value in data.items()})


def _check_type(what: str, value: Any, accepted: tuple[type, ...]) -> None:
    """InputDataError naming `what` unless `value` is one of the `accepted` JSON types (a bool is no number)."""
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
        expected = dict.fromkeys("number" if t is int and float in accepted else _JSON_NAME[t] for t in accepted)
        raise InputDataError(f"{what} is {_JSON_NAME.get(type(value), type(value).__name__)} {value!r:.40}, "
                             f"expected {' or '.join(expected)}")


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON value types a field annotated `hint` accepts (a float field also takes JSON integers,
    a TypedDict is a JSON object)."""
    accepted: list[type] = []
    for arg in get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        base = dict if is_typeddict(arg) else get_origin(arg) or arg
        accepted += [float, int] if base is float else [base]
    return tuple(accepted)


_JSON_KEY = {f.name: "K" if f.name == "d_dict" else f.name for f in fields(LeaderboardRow)}
_FIELD_OF = {key: name for name, key in _JSON_KEY.items()}
_ACCEPTS = {name: _json_types(hint) for name, hint in get_type_hints(LeaderboardRow).items()}
# The values inside the dict fields (probe entries, single concepts, reasons).
_ENTRY_ACCEPTS = {name: _json_types(get_args(hint)[1]) for name, hint in get_type_hints(LeaderboardRow).items()
                  if get_origin(hint) is dict}
ROW_KEYS = tuple(key for key in _FIELD_OF if key != REASONS_KEY)


def write_leaderboard(path: Path, rows: list[LeaderboardRow], extra: Mapping[str, Any] | None = None) -> None:
    """eval/leaderboard.json: {"schema_version": SCHEMA_VERSION, "rows": [...], **extra} (NaN written as null)."""
    io.write_json(path, {"schema_version": SCHEMA_VERSION, "rows": [row.to_json() for row in rows],
                         **(extra or {})})


def read_leaderboard_rows(path: Path) -> list[LeaderboardRow]:
    """The rows of eval/leaderboard.json; a missing or malformed file is an InputDataError naming it."""
    if not path.is_file():
        raise InputDataError(f"{path}: missing (run `stsae evaluate` first)")
    board = io.read_json(path)
    if not isinstance(board, dict):
        raise InputDataError(f"{path}: not a JSON object")
    if board.get("schema_version") != SCHEMA_VERSION:
        raise InputDataError(f"{path}: field 'schema_version' is {board.get('schema_version')!r}, expected "
                             f"{SCHEMA_VERSION} (rerun `stsae evaluate --force`)")
    rows = board.get("rows")
    if not isinstance(rows, list):
        raise InputDataError(f"{path}: field 'rows' must be a list of objects")
    return [LeaderboardRow.from_json(row, f"{path}: rows[{i}]") for i, row in enumerate(rows)]


def pareto_rows(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    """Rows on the (L0, EV) plane: ST-SAE models and baselines at matched sparsity (not dense baselines)."""
    return [row for row in rows if row.family == "stsae" or row.matched_sparsity]


def pareto_payload(rows: list[LeaderboardRow]) -> dict[str, Any]:
    """eval/pareto.json content: {"points": [{model, l0, ev, on_front}], "front": [model, ...]}."""
    candidates = pareto_rows(rows)
    coords = [(_as_float(r.l0), _as_float(r.ev)) for r in candidates]
    front = set(pareto_frontier(coords))
    points = [{"model": r.model, "l0": r.l0, "ev": r.ev, "on_front": i in front}
              for i, r in enumerate(candidates)]
    return {"points": points, "front": [candidates[i].model for i in sorted(front)]}


def _as_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


TABLE_COLUMNS = ("k_active", "ev", "l0", "dead_fraction_train", "consistency_heldout_aug",
                 "lag1_within_record", "seed_stability_mean_cos", "stability_null_data_mean_cos")


def render_table(rows: list[LeaderboardRow]) -> str:
    """The leaderboard as a fixed-width rich table (plain text, for the log)."""
    table = Table(title="leaderboard (test split)")
    for column in ("model", *TABLE_COLUMNS):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        name = row.model + (" @k" if row.matched_sparsity else "")
        table.add_row(name, *(_fmt(getattr(row, c)) for c in TABLE_COLUMNS))
    console = Console(width=160, record=True, file=StringIO())
    console.print(table)
    return console.export_text()
