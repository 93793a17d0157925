"""report.html of an applied run: a banner naming run A as the source of every model, B's predicted ages,
associations and, after `stsae transfer`, the transfer table. Self-contained, no script, strict CSP."""

from __future__ import annotations

from typing import Any

import jinja2
import pandas as pd

from stsae.apply.layout import AppliedDir
from stsae.utils import io

CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}"><meta name="referrer" content="no-referrer">
<title>{{ title }}</title>
<style>body{font:15px/1.5 sans-serif;max-width:1000px;margin:24px auto;padding:0 20px;color:#1d2733}
.banner{background:#fff4d6;border:1px solid #e6c36a;border-radius:6px;padding:12px 16px}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #dde3ea;text-align:left}</style>
</head><body>
<h1>{{ title }}</h1>
<div class="banner" id="applied-from"><strong>Every model in this report comes from run {{ source.run }}.</strong>
Concepts: {{ source.main_model }}; age model sha256 {{ source.age_model_sha256 }} with its frozen bias
correction. Nothing was fitted on this cohort{% if transfer %} except the refit reference below{% endif %}.</div>
<h2>Predicted age ({{ metrics.n }} patients with a known age)</h2>
<p>MAE {{ fmt(metrics.mae) }} years, r {{ fmt(metrics.r) }} (uncorrected predictions, all patients).
Mean Δage {{ fmt(mean_delta) }} years.</p>
<h2>Δage associations (odds ratio per 5 years, adjusted for age and sex)</h2>
<table><tr><th>Condition</th><th>OR</th><th>95% CI</th><th>p</th><th>n</th></tr>
{% for name, row in associations.items() %}<tr><td>{{ name }}</td>{% if 'skipped' in row %}<td colspan="4">skipped:
{{ row.skipped }}</td>{% else %}<td>{{ fmt(row.or_per_5y) }}</td><td>{{ fmt(row.ci_low) }}–{{ fmt(row.ci_high) }}</td>
<td>{{ fmt(row.p) }}</td><td>{{ row.n }}</td>{% endif %}</tr>{% endfor %}</table>
<h2>Concepts that move predicted age most (mean |contribution| over patients, years)</h2>
<table><tr><th>Concept</th><th>mean |contribution|</th><th>mean contribution</th></tr>
{% for row in contributions %}<tr><td>{{ row.concept }}</td><td>{{ fmt(row.abs_years) }}</td>
<td>{{ fmt(row.years) }}</td></tr>{% endfor %}</table>
{% if transfer %}<h2 id="transfer">Transfer from run {{ source.run }}</h2>
<table><tr><th>Age model</th><th>test MAE (years)</th><th>test r</th><th>n</th></tr>
<tr><td>frozen, from run {{ source.run }}</td><td>{{ fmt(transfer.age.frozen_source_model.test.mae) }}</td>
<td>{{ fmt(transfer.age.frozen_source_model.test.r) }}</td><td>{{ transfer.age.frozen_source_model.test.n }}</td></tr>
<tr><td>refit on this cohort</td>{% if 'skipped' in transfer.age.refit_on_target %}<td colspan="3">skipped:
{{ transfer.age.refit_on_target.skipped }}</td>{% else %}<td>{{ fmt(transfer.age.refit_on_target.test.mae) }}</td>
<td>{{ fmt(transfer.age.refit_on_target.test.r) }}</td><td>{{ transfer.age.refit_on_target.test.n }}</td>
{% endif %}</tr></table>
<p>Concept shift: {{ transfer.concept_shift.n_shifted }} of {{ transfer.concept_shift.n_live }} live concepts
fire more than {{ transfer.concept_shift.factor }}× more often at one site than the other
(fraction {{ fmt(transfer.concept_shift.fraction_shifted) }}).</p>{% endif %}
</body></html>
"""


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3g}"


TOP_CONCEPTS = 8


def _top_contributions(out: AppliedDir) -> list[dict[str, Any]]:
    """The TOP_CONCEPTS concepts with the largest mean |contribution_years| over B's patients."""
    table = io.read_parquet(out.contributions)
    summary = table.assign(abs_years=table["contribution_years"].abs()).groupby("concept").agg(
        abs_years=("abs_years", "mean"), years=("contribution_years", "mean"))
    return summary.nlargest(TOP_CONCEPTS, "abs_years").reset_index().to_dict("records")


def write_applied_report(out: AppliedDir, title: str, applied_from: dict[str, Any],
                         associations: dict[str, Any], transfer: dict[str, Any] | None) -> None:
    """Render B's report.html (atomic) from what apply and transfer wrote."""
    predictions = io.read_parquet(out.predictions)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(TEMPLATE).render(
        title=title, csp=CSP, source=applied_from, metrics=associations["metrics"], fmt=_fmt,
        mean_delta=float(pd.to_numeric(predictions["delta_age"]).mean()) if len(predictions) else None,
        associations=associations["associations"], transfer=transfer,
        contributions=_top_contributions(out))
    io.write_text(out.run_dir.report_html, html)
