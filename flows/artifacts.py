"""The markdown artifacts every flow run publishes, under stable keys.

Stable keys make each artifact a series in the Prefect UI (Artifacts -> key -> one version per
run), so an operator can page through past validations, decisions and champions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

DATA_SUMMARY = "data-summary"
VALIDATION = "validation-result"
METRICS = "metrics-table"  # a table artifact
DECISION = "decision"
DECISION_TABLE = "decision-table"  # a table artifact: the decision's evidence, best first
MODEL_VERSION = "model-version"
EVALUATION_REPORT = "evaluation-report"
INCOMING = "incoming-data"

METRIC_COLUMNS = ("ndcg@10", "hr@10", "mrr", "ndcg@20", "hr@20", "auc")


def publish(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=key, description=description)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table artifact: the UI shows it as a sortable table, not as text."""
    create_table_artifact(table=rows, key=key, description=description)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _p(value: Any) -> str:
    """p-values in scientific notation: 0.0000 would hide 5e-06."""
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def validation_markdown(summary_file: str | Path) -> str:
    """reports/validation/summary.json as a table: verdict, figures, drift, failures, Data Docs.

    Read from the file rather than from the stage's return value so that a failed validation
    (the stage raised) is published too.
    """
    path = Path(summary_file)
    if not path.is_file():
        return f"# Validation\n\nNo report: {path} was not written (the stage failed earlier)."
    summary = json.loads(path.read_text())
    ok = summary.get("success")
    docs = Path(summary.get("data_docs", "")).resolve()
    lines = [
        f"# Validation: {'passed' if ok else 'FAILED'}",
        "",
        f"Data Docs: [{docs}](file://{docs}) (Great Expectations, open in a browser)",
        f"Summary: `{path.resolve()}`",
        "",
        "| field | value |",
        "| --- | --- |",
    ]
    for key in ("rows", "users", "items", "duplicates", "duplicate_fraction"):
        lines.append(f"| {key} | {_cell(summary.get(key))} |")
    drift = summary.get("drift")
    if drift:
        lines += ["", "## Drift against the previous validated version", ""]
        lines += ["| figure | value | limit |", "| --- | --- | --- |"]
        lines.append(
            f"| row change | {_cell(drift['row_change'])} | {_cell(drift['max_row_change'])} |"
        )
        lines.append(
            f"| popularity shift | {_cell(drift['popularity_shift'])} | "
            f"{_cell(drift['max_popularity_shift'])} |"
        )
    failed = [
        e
        for e in summary.get("expectations", [])
        if not e.get("success") and e.get("severity") != "warning"
    ]
    warnings = summary.get("warnings") or []
    total = len(summary.get("expectations", []))
    lines += ["", f"{total} expectations evaluated, {len(failed)} failed, {len(warnings)} warned."]
    if warnings:
        lines += ["", "## Warnings (facts about the data; the run goes on)", ""]
        lines += ["| table | column | check | count |", "| --- | --- | --- | --- |"]
        for w in warnings:
            count = f"{w.get('count')} {w.get('unit') or ''}".strip()
            lines.append(f"| {w['table']} | {w.get('column') or ''} | {w['check']} | {count} |")
    kcore = summary.get("kcore")
    if kcore:
        lines += ["", "## What the features stage's k-core filter will drop", ""]
        lines += ["| | removed | share |", "| --- | --- | --- |"]
        for unit in ("rows", "users", "items"):
            share = _cell(kcore[f"{unit}_share"])
            lines.append(f"| {unit} | {kcore[f'{unit}_removed']} | {share} |")
    if failed:
        lines += ["", "| table | column | expectation | unexpected | examples |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for e in failed:
            lines.append(
                f"| {e['table']} | {e.get('column') or ''} | {e['expectation']} | "
                f"{e.get('unexpected_count')} | {', '.join(map(str, e.get('examples') or []))} |"
            )
    return "\n".join(lines)


def metrics_rows(models: dict[str, dict[str, Any]], primary: str) -> list[dict[str, Any]]:
    """Every model's leave-one-out full-ranking metrics (4 decimals), best primary metric
    first, with its rank."""
    order = sorted(models, key=lambda name: -float(models[name].get(primary, 0.0)))
    return [
        {"rank": rank, "model": name}
        | {key: _figure(models[name].get(key)) for key in dict.fromkeys([primary, *METRIC_COLUMNS])}
        for rank, name in enumerate(order, 1)
    ]


def decision_rows(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """Each challenger against the champion, the largest improvement first: the paired mean
    difference with its intervals, the tests, the guardrails and whether it could be promoted.
    """
    verdict = decision["verdict"]
    evidence = sorted(
        decision.get("evidence") or [], key=lambda e: -float(e.get("mean_diff") or 0.0)
    )
    rows = []
    for e in evidence:
        rows.append(
            {
                "challenger": e["challenger"],
                "champion": decision["champion"],
                f"mean diff ({decision['primary']['metric']})": _figure(e.get("mean_diff")),
                "95% CI": _interval(e.get("ci95")),
                "decision CI": _interval(e.get("decision_interval")),
                "p (Wilcoxon)": _p(e.get("p_wilcoxon")),
                "p (Holm)": _p(e.get("p_holm")),
                "guardrails": ", ".join(e.get("guardrails_breached") or []) or "ok",
                "eligible": "yes" if e.get("eligible") else "no",
                "promoted": "yes"
                if verdict["promote"] and verdict["model"] == e["challenger"]
                else "no",
            }
        )
    if not rows:  # one model evaluated: nothing to compare, the table says so
        rows.append({"challenger": "none (one model evaluated)", "champion": decision["champion"]})
    return rows


def _interval(pair: Any) -> str:
    """[low, high] to 4 decimals; "-" where none was computed."""
    if not pair or len(pair) != 2:
        return "-"
    return f"[{float(pair[0]):.4f}, {float(pair[1]):.4f}]"


def _figure(value: Any) -> Any:
    return round(float(value), 4) if isinstance(value, (int, float)) else value


def decision_markdown(decision: dict[str, Any], plan: dict[str, Any] | None) -> str:
    verdict = decision["verdict"]
    action = f"promote **{verdict['model']}**" if verdict["promote"] else "keep the champion"
    features_sha = str(decision.get("data_version", {}).get("features_manifest_sha256"))
    lines = [
        f"# Decision: {action}",
        "",
        f"- reason: {verdict['reason']}",
        f"- champion evaluated: {decision['champion']} ({decision.get('champion_source')})",
        f"- primary metric: {decision['primary']['metric']}",
        f"- data version: features {features_sha[:12]}",
    ]
    if decision.get("not_compared"):
        lines.append(
            "- trained earlier, not in this run's models, so not compared: "
            + ", ".join(decision["not_compared"])
        )
    if plan is not None:
        step = f"export {plan['model']}" if plan["model"] else "nothing to export"
        lines.append(f"- this run: {step}; promote: {plan['promote']} ({plan['reason']})")
    if decision.get("evidence"):
        lines += ["", f"Correction: {decision.get('correction', 'none recorded')}.", ""]
        lines.append(
            "| challenger | mean diff | 95% CI | decision CI | p (Wilcoxon) | p (Holm) "
            "| guardrails | eligible |"
        )
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for e in decision["evidence"]:
            low, high = e.get("ci95") or (float("nan"), float("nan"))
            d_low, d_high = e.get("decision_interval") or (float("nan"), float("nan"))
            level = e.get("decision_level")
            at = f" ({level:.2%})" if isinstance(level, float) else ""
            breached = ", ".join(e.get("guardrails_breached") or []) or "ok"
            lines.append(
                f"| {e['challenger']} | {_cell(e.get('mean_diff'))} | [{low:.4f}, {high:.4f}] | "
                f"[{d_low:.4f}, {d_high:.4f}]{at} | {_p(e.get('p_wilcoxon'))} | "
                f"{_p(e.get('p_holm'))} | {breached} | {e.get('eligible')} |"
            )
    return "\n".join(lines)


def model_version_markdown(
    champion: dict[str, Any] | None, exported: dict[str, Any] | None, promoted: bool
) -> str:
    lines = ["# Model version", ""]
    if exported:
        lines.append(
            f"- exported this run: {exported['name']}/{exported['version']} "
            f"(parity max abs diff {exported['parity']['max_abs_diff']:.2g})"
        )
    else:
        lines.append("- exported this run: nothing")
    lines.append(f"- promoted this run: {'yes' if promoted else 'no'}")
    if champion:
        lines += [
            f"- serving champion: **{champion['model']}/{champion['version']}**",
            f"- promoted at: {champion.get('promoted_at')}",
            f"- reason: {champion.get('reason')}",
            "",
            f"Roll back: `recsys promote {champion['model']} <VERSION>` "
            "(`recsys promote --help`; versions are the folders of artifacts/<model>/).",
        ]
    else:
        lines.append("- serving champion: none yet")
    return "\n".join(lines)


def incoming_markdown(staged: dict[str, Any], outcome: dict[str, Any] | None) -> str:
    lines = ["# Incoming data", ""]
    if not staged["files"]:
        return "\n".join(lines + ["No new files: nothing was retrained."])
    lines.append(f"- rows added: {staged['rows_added']}")
    lines += [f"- file: `{name}`" for name in staged["files"]]
    if outcome is not None:
        if outcome.get("committed"):
            where = staged.get("appended")
            lines.append(f"- appended as {outcome.get('parts')} part(s) to `{where}`")
            if outcome.get("versioned"):
                lines.append(f"- DVC recorded the new raw version in `{outcome['versioned']}`")
            elif outcome.get("dvc_error"):
                lines.append(f"- **DVC did not record it**: {outcome['dvc_error']}")
        else:
            lines.append("- REJECTED: the raw data is unchanged")
        lines.append(f"- files moved to `{outcome.get('moved_to')}`")
    return "\n".join(lines)
