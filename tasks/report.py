"""The evaluation report: Markdown (terminal, Prefect artifact) and one standalone HTML page.

Every table is built once as rows of cells and rendered twice, and each table states the
protocol card it was computed under (tasks.evaluate.same_protocol refuses a table whose rows
disagree), so no figure reaches a reader without the protocol that produced it. The HTML page
embeds its plots as PNG data, so it can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import polars as pl

from tasks.comparison import GUARDRAILS, SEGMENT_LABEL, bootstrap_interval
from tasks.protocol import HISTORY_BUCKETS, KS, same_protocol

matplotlib.use("Agg")  # no display: the report's plots are PNG files
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.ticker import MaxNLocator  # noqa: E402

# The first column orders a table: NDCG@10, the default primary metric, then the rest.
FULL_COLUMNS = ["ndcg@10", "hr@10", "mrr", "auc", "ndcg@5", "ndcg@20", "hr@5", "hr@20"]
FULL_COLUMNS += ["precision@10", "recall@10"]
SAMPLED_COLUMNS = ["ndcg@10", "hr@10", "mrr"]
BEYOND_COLUMNS = [f"coverage@{k}" for k in KS]
BEYOND_COLUMNS += ["novelty@10", "diversity@10", "popularity_percentile@10"]

WIDTH = 11  # inches of every plot: 1,100 pixels at the report's 100 dpi, readable on a screen
Table = tuple[str, str, list[str], list[list[str]]]  # title, card line, header, rows
Section = tuple[str, list[str]]  # title, lines (a bulleted list)


def metric_table(rows: list[dict[str, Any]], card_id: str, title: str, columns: list[str]) -> Table:
    """Models sorted by the table's first column, under the one card they share."""
    chosen = [row for row in rows if row["card"]["id"] == card_id]
    card = same_protocol(chosen)
    chosen.sort(key=lambda row: -row["metrics"][columns[0]])
    body = [[row["model"], *(_figure(row["metrics"].get(c)) for c in columns)] for row in chosen]
    return title, card_line(card, chosen[0]["users"] if chosen else 0), ["model", *columns], body


def _figure(value: float | None) -> str:
    """n/a for a figure the data cannot give (diversity without item categories)."""
    return "n/a" if value is None else f"{value:.4f}"


def card_line(card: dict[str, Any], users: int | None = None) -> str:
    """The table's own protocol: its card id, ranking, candidates and users. What every card of
    a split shares (split, seen items, ties, K, data version) is in protocol_section, once."""
    sampler = card.get("sampler")
    drawn = (
        f"; sampler {sampler['kind']}, n={sampler['n']}, seed={sampler['seed']}" if sampler else ""
    )
    return (
        f"Protocol `{card['id']}` (see Protocol): {card['ranking']} ranking; candidates: "
        f"{card['candidates']}{drawn}{'' if users is None else f'; {users} test users'}."
    )


def protocol_section(cards: list[dict[str, Any]]) -> Section:
    """The protocol paragraph, once: each split, then what every card shares."""
    splits = {card["split"]: card["split_detail"] for card in cards}
    card = cards[0]
    version = card["data_version"]
    lines = [f"`{split}`: {detail}." for split, detail in splits.items()]
    lines.append(
        f"Seen items {card['seen_items']}; ties {card['ties']}; K in {card['ks']}; data "
        f"features {version['features_manifest_sha256'][:12]}, raw "
        f"{str(version.get('raw_md5'))[:12]}."
    )
    return "Protocol", lines


def run_section(run: dict[str, Any]) -> Section:
    """What produced these figures: code, data, each model's weights, the parameters."""
    version = run["data_version"]
    lines = [
        f"code: git commit {run['code_commit'] or 'unknown (not a git checkout)'}",
        f"data: features manifest sha256 {version['features_manifest_sha256'][:12]}, raw data "
        f"(data.dvc) md5 {str(version.get('raw_md5'))[:12]}",
    ]
    lines += [f"model {name}: {what}" for name, what in sorted(run["models"].items())]
    lines.append("evaluate parameters: " + ", ".join(f"{k}={v}" for k, v in run["params"].items()))
    return "Run", lines


def history_table(scored, metric: str, card: dict[str, Any]) -> Table:
    """Test users per history-length bucket (the same users for every model) with each
    model's mean metric: how many users stand behind each point of the history plot."""
    loo = scored["loo"]
    names = sorted(loo, key=lambda n: -loo[n].full[metric])
    curves = {name: history_curve(loo[name].per_user, metric) for name in names}
    buckets = curves[names[0]]
    head = ["history", *(bucket_label(b["history_min"]) for b in buckets)]
    rows = [["test users", *(str(b["users"]) for b in buckets)]]
    rows += [[name, *(f"{c[metric]:.4f}" for c in curves[name])] for name in names]
    title = f"{metric} by history length (interactions before the target)"
    return title, card_line(card, loo[names[0]].per_user.height), head, rows


def curve_table(curves: dict[str, list[float]]) -> Table:
    """The gradient models' training curves in figures: epochs, best epoch and its value."""
    rows = []
    for name, values in sorted(curves.items()):
        best = int(np.argmax(values))
        rows.append(
            [name, str(len(values)), str(best + 1), f"{values[best]:.4f}", f"{values[-1]:.4f}"]
        )
    head = ["model", "epochs", "best epoch", "best validation ndcg@10", "last validation ndcg@10"]
    note = "Validation split of the leave-one-out protocol, full ranking, after each epoch."
    return "Training curves (validation NDCG@10 per epoch)", note, head, rows


def bucket_label(low: int) -> str:
    """0-19, 20-49, ..., 500+: a history bucket by its edges."""
    i = HISTORY_BUCKETS.index(low)
    return f"{low}+" if i == len(HISTORY_BUCKETS) - 1 else f"{low}-{HISTORY_BUCKETS[i + 1] - 1}"


def comparison_tables(result: dict[str, Any]) -> list[Table]:
    """The decision's table (raw and Holm-adjusted p, both intervals, guardrails beside their
    limits) and the exploratory segment table (Benjamini-Hochberg p, never used to promote)."""
    metric = result["primary_metric"]
    card = card_line(result["card"])
    level = result["decision_level"]
    head = ["challenger", f"mean diff {metric}", "95% CI", f"decision CI ({level:.2%})"]
    head += ["p (Wilcoxon)", "p (Holm)", "p (t-test)", "significant (Holm)"]
    head += [f"{m} (limit)" for m in GUARDRAILS]
    head += ["guardrails breached", "eligible"]
    rows = []
    for r in sorted(result["challengers"], key=lambda r: -r["mean_diff"]):
        rows.append(
            [
                r["challenger"],
                f"{r['mean_diff']:+.4f}",
                _interval(r["ci95"]),
                _interval(r["decision_interval"]),
                _p(r["p_wilcoxon"]),
                _p(r["p_holm"]),
                _p(r["p_ttest"]),
                "yes" if r["significant_improvement"] else "no",
                *[_guardrail(m, r["guardrails"].get(m)) for m in GUARDRAILS],
                ", ".join(r["guardrails_breached"]) or "none",
                "yes" if r["eligible"] else "no",
            ]
        )
    title = (
        f"Champion {result['champion']} ({result['champion_source']}) vs challengers "
        f"({result['correction']})"
    )
    tables = [(title, card, head, rows)]
    segments = list(result["challengers"][0]["segments"]) if result["challengers"] else []
    seg_rows = []
    for r in sorted(result["challengers"], key=lambda r: -r["mean_diff"]):
        cells = [r["challenger"]]
        for label in segments:
            s = r["segments"][label]
            cells.append(
                f"{s['mean_diff']:+.4f} {_interval(s['ci95'])} n={s['users']} p_BH={_p(s['p_bh'])}"
                if s["users"]
                else "n=0"
            )
        seg_rows.append(cells)
    tables.append(
        (
            f"Paired {metric} difference by segment (mean, 95% CI, users, BH-adjusted p): "
            f"{SEGMENT_LABEL}",
            card,
            ["challenger", *segments],
            seg_rows,
        )
    )
    return tables


def _interval(ci: list[float]) -> str:
    return "n/a" if any(np.isnan(ci)) else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _p(value: float | None) -> str:
    """Scientific notation (1.4e-01): p-values span many orders of magnitude."""
    return "n/a" if value is None else f"{value:.1e}"


def _guardrail(metric: str, check: dict[str, Any] | None) -> str:
    """The challenger's value beside the limit it must respect; n/a where not checked."""
    if check is None:
        return "n/a"
    bound = ">=" if GUARDRAILS[metric][0] == "relative_drop" else "<="
    flag = " BREACHED" if check["breached"] else ""
    return f"{check['challenger']:.3f} ({bound} {check['limit']:.3f}){flag}"


def markdown(tables: list[Table], result: dict[str, Any], sections: Sequence[Section] = ()) -> str:
    """The report as Markdown: the decision, the sections (protocol, run), then the tables."""
    verdict = result["verdict"]
    lines = ["# Offline evaluation: champion vs challenger", ""]
    lines += [
        f"**Decision:** {'PROMOTE ' + verdict['model'] if verdict['promote'] else 'keep'} "
        f"{'' if verdict['promote'] else result['champion']}: {verdict['reason']}.",
        "",
    ]
    lines += [
        f"Test: {result['test']}; interval: {result['interval']}; alpha {result['alpha']}; "
        f"correction: {result['correction']}. Segments: {result['segment_correction']}.",
        "",
    ]
    for title, items in sections:
        lines += [f"## {title}", "", *(f"- {item}" for item in items), ""]
    for title, card, head, rows in tables:
        lines += [f"## {title}", "", card, ""]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def page(
    tables: list[Table],
    result: dict[str, Any],
    images: dict[str, str],
    sections: Sequence[Section] = (),
) -> str:
    """The report as one HTML page: the decision, the sections, the plots, then the tables."""
    verdict = result["verdict"]
    decision = f"Promote {verdict['model']}" if verdict["promote"] else f"Keep {result['champion']}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Offline evaluation</title><style>body{font-family:sans-serif;margin:2em;"
        "max-width:1200px}table{border-collapse:collapse;margin-bottom:1em;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,"
        "th:first-child{text-align:left}.card{color:#555;font-size:12px}"
        ".verdict{font-size:18px;padding:.5em;background:#eef}img{max-width:100%}"
        "li{font-size:13px}</style></head><body>",
        "<h1>Offline evaluation: champion vs challenger</h1>",
        f"<p class='verdict'><b>{html.escape(decision)}</b>: {html.escape(verdict['reason'])}</p>",
        f"<p class='card'>{html.escape(result['test'])}; {html.escape(result['interval'])}; "
        f"alpha {result['alpha']}; correction: {html.escape(result['correction'])}. Segments: "
        f"{html.escape(result['segment_correction'])}.</p>",
    ]
    for title, items in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><ul>")
        parts += [f"<li>{html.escape(item)}</li>" for item in items]
        parts.append("</ul>")
    for caption, data in images.items():
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
            f"{data}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    for title, card, head, rows in tables:
        parts += [f"<h2>{html.escape(title)}</h2>", f"<p class='card'>{html.escape(card)}</p>"]
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- plots -------------------------------------------------------------------------------------


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(
    scored,
    stats,
    result: dict[str, Any],
    bootstrap_samples: int,
    seed: int,
    curves: dict[str, list[float]] | None = None,
) -> dict:
    """Metric bars with 95% intervals, the challengers' forest plot, NDCG@10 by history length
    (with the users behind each bucket), the popularity-bias curve, the gradient models'
    training curves."""
    metric = result["primary_metric"]
    loo = scored["loo"]
    names = sorted(loo, key=lambda n: -loo[n].full[metric])
    images = {}

    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    means, errors = [], [[], []]
    for name in names:
        values = loo[name].per_user[f"full_{metric}"].to_numpy()
        low, high = bootstrap_interval(values, bootstrap_samples, seed)
        means.append(values.mean())
        errors[0].append(values.mean() - low)
        errors[1].append(high - values.mean())
    colors = ["#d62728" if n == result["champion"] else "#1f77b4" for n in names]
    ax.bar(names, means, yerr=errors, capsize=3, color=colors)
    ax.set_ylabel(f"{metric} (loo, full ranking)")
    ax.tick_params(axis="x", rotation=45)
    images[f"{metric} per model with 95% bootstrap intervals (red: champion)"] = _png(fig)
    plt.close(fig)

    if result["challengers"]:
        caption, data = forest_plot(result)
        images[caption] = data

    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    users = {c["history_min"]: c["users"] for c in history_curve(loo[names[0]].per_user, metric)}
    labels = [f"{bucket_label(lo)}\n(n={users.get(lo, 0)})" for lo in HISTORY_BUCKETS]
    for name in names:
        curve = history_curve(loo[name].per_user, metric)
        x = [HISTORY_BUCKETS.index(c["history_min"]) for c in curve]
        ax.plot(x, [c[metric] for c in curve], marker="o", label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("interactions before the target (n: test users in the bucket)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8, ncol=4)
    counts = ", ".join(f"{bucket_label(lo)}: {n}" for lo, n in users.items())
    images[f"{metric} by history length (test users per bucket: {counts})"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
    deciles = np.arange(1, 11)
    for name in names:
        ax.plot(deciles, popularity_curve(loo[name].recommended, stats), marker=".", label=name)
    targets = np.bincount(
        loo[names[0]].per_user["target"].to_numpy(), minlength=len(stats.percentile)
    )
    ax.plot(deciles, popularity_curve(targets, stats), "k--", label="test targets")
    ax.set_xlabel("item popularity decile (10: most popular)")
    ax.set_ylabel("share of top-10 recommendations")
    ax.legend(fontsize=8, ncol=4)
    images["popularity bias: where recommendations fall by item popularity"] = _png(fig)
    plt.close(fig)

    if curves:
        fig, ax = plt.subplots(figsize=(WIDTH, 4.5))
        for name, values in sorted(curves.items()):
            ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation ndcg@10 (loo, full ranking)")
        ax.legend(fontsize=8, ncol=3)
        images["training curves: validation NDCG@10 per epoch of each gradient model"] = _png(fig)
        plt.close(fig)
    return images


def forest_plot(result: dict[str, Any]) -> tuple[str, str]:
    """Each challenger's mean paired difference with its decision interval (thick) and 95%
    interval (thin) against zero: a challenger is promotable only if its thick bar clears 0."""
    metric = result["primary_metric"]
    level = result["decision_level"]
    rows = sorted(result["challengers"], key=lambda r: r["mean_diff"])
    fig, ax = plt.subplots(figsize=(WIDTH, 1.2 + 0.4 * len(rows)))
    for y, r in enumerate(rows):
        mean = r["mean_diff"]
        low, high = r["decision_interval"]
        low95, high95 = r["ci95"]
        color = "#2ca02c" if r["eligible"] else "#1f77b4"
        ax.plot([low95, high95], [y, y], color=color, linewidth=1)
        ax.plot([low, high], [y, y], color=color, linewidth=4, alpha=0.5)
        ax.plot([mean], [y], "o", color=color)
    ax.axvline(0.0, color="k", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [r["challenger"] for r in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"paired {metric} difference vs {result['champion']} (challenger - champion)")
    caption = (
        f"paired {metric} difference per challenger: {level:.2%} decision interval (thick, "
        f"Bonferroni) and 95% interval (thin) against zero (green: eligible)"
    )
    data = _png(fig)
    plt.close(fig)
    return caption, data


def history_curve(per_user, metric: str) -> list[dict[str, float]]:
    """Mean metric per history-length bucket (buckets with users only)."""
    history = per_user["history_len"].to_numpy()
    values = per_user[f"full_{metric}"].to_numpy()
    edges = [*HISTORY_BUCKETS, np.inf]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (history >= lo) & (history < hi)
        if mask.any():
            out.append(
                {"history_min": lo, metric: float(values[mask].mean()), "users": int(mask.sum())}
            )
    return out


def popularity_curve(counts: np.ndarray, stats) -> np.ndarray:
    """Share of `counts` (per item) falling in each popularity decile of the catalogue."""
    decile = np.minimum((stats.percentile[1:] * 10).astype(int), 9)
    share = np.bincount(decile, weights=counts[1:], minlength=10)
    return share / max(share.sum(), 1)


def write_reports(
    rows,
    result,
    scored,
    stats,
    folder: Path,
    bootstrap_samples: int,
    seed: int,
    run: dict[str, Any] | None = None,
    curves: dict[str, list[float]] | None = None,
) -> str:
    """report.md and report.html into `folder`; returns the Markdown. `run`: what produced the
    figures (tasks.evaluate.run_metadata); `curves`: validation NDCG@10 per epoch of each
    gradient model (tasks.model_store.validation_curve)."""
    tables = [
        metric_table(rows, "loo/full", "Leave-one-out, full ranking (primary)", FULL_COLUMNS),
        metric_table(
            rows,
            "loo/sampled",
            "Leave-one-out, sampled ranking (labelled: not primary)",
            SAMPLED_COLUMNS,
        ),
        metric_table(rows, "loo/beyond", "Leave-one-out, beyond accuracy", BEYOND_COLUMNS),
    ]
    if "temporal" in scored:
        tables += [
            metric_table(rows, "temporal/full", "Global temporal, full ranking", FULL_COLUMNS),
            metric_table(
                rows,
                "temporal/sampled",
                "Global temporal, sampled ranking (labelled)",
                SAMPLED_COLUMNS,
            ),
            metric_table(
                rows, "temporal/beyond", "Global temporal, beyond accuracy", BEYOND_COLUMNS
            ),
        ]
    tables += comparison_tables(result)
    tables.append(history_table(scored, result["primary_metric"], result["card"]))
    if curves:
        tables.append(curve_table(curves))
    cards = list({row["card"]["id"]: row["card"] for row in rows}.values())
    sections = [protocol_section(cards or [result["card"]])]
    if run is not None:
        sections.append(run_section(run))
    text = markdown(tables, result, sections)
    (folder / "report.md").write_text(text)
    images = plots(scored, stats, result, bootstrap_samples, seed, curves)
    (folder / "report.html").write_text(page(tables, result, images, sections))
    return text


def write_plot_data(scored, stats, metric: str, folder: Path) -> None:
    """CSV files `dvc plots show` draws: one per model, so each model is a line."""
    for protocol, models in scored.items():
        for name, s in models.items():
            history = folder / "by_history" / protocol
            history.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(history_curve(s.per_user, metric)).write_csv(history / f"{name}.csv")
            if protocol != "loo":
                continue
            curve = folder / "popularity_bias"
            curve.mkdir(parents=True, exist_ok=True)
            shares = popularity_curve(s.recommended, stats)
            pl.DataFrame({"popularity_decile": np.arange(1, 11), "share": shares}).write_csv(
                curve / f"{name}.csv"
            )
