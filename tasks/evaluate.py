"""The evaluate stage: data/features + models/* -> reports/evaluation/ (the README's protocol).

Every trained model is scored on the same test users of each protocol: leave-one-out by time
(models/<name>/, the primary protocol) and the global temporal split (models/<name>/temporal/).
Scores stream through batches of users sized from a memory budget, so the catalogue's size never
decides whether the evaluation fits in memory; the users are cut into shards (evaluate.shard_users)
scored in this process or side by side on a Dask cluster (evaluate.parallel), with the same
result either way. Per user it records the full-ranking metrics, the
sampled-ranking ones (labelled: for comparison with published tables only) and the
beyond-accuracy figures of the top-K list; tasks/comparison.py then decides champion vs
challenger and tasks/report.py writes what people read.

Layout of reports/evaluation/ (written as one folder, swapped in atomically):
- metrics.json      a short summary per model and protocol for `dvc metrics show/diff` and
                    `dvc exp show` (git-tracked, so `dvc metrics diff` has a baseline)
- metrics.csv       the same, one row per (model, protocol card), the card's fields as columns
- cards.json        the protocol cards: split, candidates, sampler and seed, K, seen-item filter,
                    data version
- per_user/<protocol>/<model>.parquet   the per-user figures behind every mean
- plots/*.csv       NDCG@10 by history length, the popularity-bias curve (`dvc plots show`)
- comparison.json, decision.json        champion vs challenger (tasks/comparison.py)
- report.md, report.html                tasks/report.py
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from scipy.stats import rankdata

from recsys_models.data import EvalDataset, FeatureData
from recsys_models.metrics import (
    sample_negatives,
    sampled_metrics,
    sampled_ranks,
    set_metrics,
    target_positions,
)
from recsys_models.spec import GRADIENT
from tasks import comparison, report
from tasks.artifact_store import RemappedScorer, ServedModel
from tasks.errors import RecsysError
from tasks.feature_store import data_version, item_ids, load_features, user_ids
from tasks.io import staged_dir, write_json
from tasks.model_store import (
    load_model,
    model_dir,
    read_record,
    spec,
    staleness,
    trained_models,
    validation_curve,
)
from tasks.params import Params
from tasks.protocol import BEYOND_K, CARD_KINDS, KS, PRIMARY_METRICS, protocol_card
from tasks.registry import champion_folder, read_champion

# --- scoring -------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One model under one protocol: per-user figures and the catalogue-level ones."""

    name: str
    protocol: str
    per_user: pl.DataFrame
    full: dict[str, float]
    sampled: dict[str, float]
    beyond: dict[str, float]
    recommended: np.ndarray  # [I+1] how often each item is in a top-10 list
    seconds: float


def batch_size(n_items: int, budget_mb: int) -> int:
    """Users per batch: the score matrix and its sorted copy and masks stay within the budget."""
    per_user = (n_items + 1) * 4 * 6  # float scores, a sorted copy, masks and a top-K buffer
    return max(1, min(4096, budget_mb * 1024 * 1024 // per_user))


class CatalogueStats:
    """Item figures every model's lists are judged by: popularity percentile, self-information,
    unit genre vectors; all from the protocol's training interactions only."""

    def __init__(self, data: FeatureData):
        counts = np.asarray(data.item_popularity, dtype=np.float64)
        real = counts[1:]
        self.popularity = counts
        self.percentile = np.zeros_like(counts)
        self.percentile[1:] = (rankdata(real, method="average") - 1) / max(len(real) - 1, 1)
        users = max(int(np.unique(data.train_users).size), 1)
        self.self_information = -np.log2((counts + 1.0) / (users + 1.0))
        genres = torch.as_tensor(np.asarray(data.item_genres, dtype=np.float32))
        self.unit_genres = torch.nn.functional.normalize(genres, dim=1)
        # without item categories a list's diversity has nothing to measure: it is left out
        # (the report shows n/a), never a constant 1.0
        self.has_genres = bool(genres.numel()) and bool(genres.any())

    def head_threshold(self, fraction: float) -> float:
        """The smallest training count among the most popular `fraction` of the catalogue."""
        real = np.sort(self.popularity[1:])[::-1]
        top = max(1, int(math.ceil(len(real) * fraction)))
        return float(real[top - 1])


@dataclass
class Shard:
    """The figures of one shard of users: per-user columns, and the catalogue counts that add
    up across shards (how often each item is recommended, which items any list covers)."""

    columns: dict[str, np.ndarray]
    recommended: np.ndarray
    covered: dict[int, np.ndarray]


def score_model(
    net,
    data,
    name: str,
    protocol: str,
    params: Params,
    stats: CatalogueStats | None = None,
    client: Any = None,
) -> Scored:
    """Per-user full-ranking, sampled-ranking and beyond-accuracy figures of one model.

    The test users are cut into shards of evaluate.shard_users, scored one after the other in
    this process, or side by side on a Dask cluster when `client` (a distributed.Client) is
    given. Every per-user figure depends on that user alone (the sampled negatives are seeded
    by (seed, user)), and the shards are put back in user order, so the result is the same
    either way; memory is one batch of scores per process plus the per-user columns.
    """
    stats = stats or CatalogueStats(data)  # the same for every model of a protocol: pass it
    ds = EvalDataset(data, "test")
    touched = _touched(data)
    size = params.evaluate.shard_users
    parts = [ds.users[lo : lo + size] for lo in range(0, len(ds), size)] or [ds.users[:0]]
    start = time.perf_counter()
    if isinstance(net, torch.nn.Module):  # otherwise the served champion (RemappedScorer)
        net = net.to(torch.device("cpu")).eval()
    if client is None:
        shards = [score_shard(net, data, ds, touched, users, params, stats) for users in parts]
    else:
        shared = client.scatter([net, data, ds, touched, stats], broadcast=True)
        net_f, data_f, ds_f, touched_f, stats_f = shared
        futures = [
            client.submit(
                score_shard, net_f, data_f, ds_f, touched_f, users, params, stats_f, pure=False
            )
            for users in parts
        ]
        shards = client.gather(futures)
    seconds = time.perf_counter() - start
    columns = {key: np.concatenate([sh.columns[key] for sh in shards]) for key in shards[0].columns}
    recommended = np.sum([sh.recommended for sh in shards], axis=0)
    covered = {k: np.logical_or.reduce([sh.covered[k] for sh in shards]) for k in KS}
    per_user = pl.DataFrame(columns)
    per_user = per_user.with_columns(
        pl.Series("target_popularity", stats.popularity[per_user["target"].to_numpy()])
    )

    def means(prefix: str) -> dict[str, float]:
        names = [c for c in per_user.columns if c.startswith(prefix)]
        return {c.removeprefix(prefix): float(per_user[c].mean()) for c in names}

    full, sampled, beyond = means("full_"), means("sampled_"), means("beyond_")
    beyond |= {f"coverage@{k}": float(covered[k][1:].mean()) for k in KS}
    return Scored(name, protocol, per_user, full, sampled, beyond, recommended, seconds)


def score_shard(
    net,
    data,
    ds: EvalDataset,
    touched: tuple[np.ndarray, np.ndarray],
    users: np.ndarray,
    params: Params,
    stats: CatalogueStats,
) -> Shard:
    """One shard of test users, in batches sized from evaluate.memory_budget_mb."""
    p = params.evaluate
    size = batch_size(data.n_items, p.memory_budget_mb)
    recommended = np.zeros(data.n_items + 1, dtype=np.int64)
    covered = {k: np.zeros(data.n_items + 1, dtype=bool) for k in KS}
    columns: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for lo in range(0, len(users), size):
            batch = ds.collate(users[lo : lo + size].tolist())
            users_t = batch["user"]
            scores = torch.as_tensor(net.score(users_t, batch["history"])).float()
            targets = batch["targets"]
            positions, beaten = target_positions(
                scores, targets, batch["seen_rows"], batch["seen_cols"]
            )
            out = {f"full_{k}": v for k, v in set_metrics(positions, beaten, KS).items()}
            negatives = sample_negatives(
                data.n_items,
                touched[0],
                touched[1],
                users_t.numpy(),
                batch["target"].numpy(),
                n=p.sampled_negatives,
                seed=params.seed,
            )
            ranks = sampled_ranks(scores, targets, torch.from_numpy(negatives)).float()
            sampled = sampled_metrics(ranks, targets > 0, KS)
            out |= {f"sampled_{key}": value for key, value in sampled.items()}
            top = _top_lists(scores, batch["seen_rows"], batch["seen_cols"], max(KS))
            for k in KS:
                covered[k][top[:, :k].reshape(-1).numpy()] = True
            recommended += np.bincount(
                top[:, :BEYOND_K].reshape(-1).numpy(), minlength=len(recommended)
            )
            out |= _beyond(top[:, :BEYOND_K], stats)
            history = np.diff(ds.indptr)[users_t.numpy()]
            out |= {
                "user_idx": users_t,
                "history_len": torch.from_numpy(history),
                "n_targets": (targets > 0).sum(dim=1),
                "target": batch["target"],
            }
            for key, value in out.items():
                columns.setdefault(key, []).append(np.asarray(value))
    merged = {key: np.concatenate(parts) for key, parts in columns.items()}
    return Shard(merged, recommended, covered)


def _touched(data) -> tuple[np.ndarray, np.ndarray]:
    """CSR of every item a test user touched, the targets included: never a sampled negative."""
    seen_ptr, seen_items = data.seen("test")
    target_ptr, target_items = data.target_sets("test")
    n = len(seen_ptr) - 1
    users = np.concatenate(
        [np.repeat(np.arange(n), np.diff(seen_ptr)), np.repeat(np.arange(n), np.diff(target_ptr))]
    )
    items = np.concatenate([seen_items, target_items])
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=n)
    return np.concatenate([[0], np.cumsum(counts)]), items[order]


def _top_lists(scores, seen_rows, seen_cols, k: int):
    """[B, k] the items each user would be shown: padding and seen items never appear."""
    masked = torch.where(torch.isnan(scores), float("-inf"), scores.clone())
    masked[:, 0] = float("-inf")
    if seen_rows.numel():
        masked[seen_rows, seen_cols] = float("-inf")
    return torch.topk(masked, min(k, masked.shape[1] - 1), dim=1).indices


def _beyond(top, stats: CatalogueStats) -> dict[str, Any]:
    """Novelty, intra-list diversity (genre cosine distance, where items have genres) and
    popularity percentile per list."""
    items = top.numpy()
    out = {
        f"beyond_novelty@{BEYOND_K}": stats.self_information[items].mean(axis=1),
        f"beyond_popularity_percentile@{BEYOND_K}": stats.percentile[items].mean(axis=1),
    }
    if stats.has_genres:
        vectors = stats.unit_genres[top]  # [B, K, G]
        similarity = vectors @ vectors.transpose(1, 2)
        k = top.shape[1]
        pairs = max(k * (k - 1), 1)
        diagonal = similarity.diagonal(dim1=1, dim2=2).sum(dim=1)
        off_diagonal = similarity.sum(dim=(1, 2)) - diagonal
        out[f"beyond_diversity@{BEYOND_K}"] = (1.0 - off_diagonal / pairs).numpy()
    return out


# --- the stage ---------------------------------------------------------------------------------


def evaluate(
    features_dir: Path,
    models_dir: Path,
    out_dir: Path,
    params: Params,
    dvc_file: Path = Path("data.dvc"),
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score every trained model under each protocol (or the models in `only`: a flow run's
    own), compare challengers with the champion, write reports/evaluation/ atomically; return
    the summary and the decision. Trained models left out by `only` are listed in the decision
    (`not_compared`), never silently compared."""
    features_dir, models_dir, out_dir = Path(features_dir), Path(models_dir), Path(out_dir)
    _check_params(params)
    version = data_version(features_dir, dvc_file)
    scored, stats, skipped = score_all(features_dir, models_dir, version, params, only)
    cards = {
        f"{protocol}/{kind}": protocol_card(
            protocol, kind, version, params.evaluate.sampled_negatives, params.seed
        )
        for protocol in scored
        for kind in CARD_KINDS
    }
    rows = metric_rows(scored, cards)
    result, decision = decide(scored["loo"], stats, features_dir, params)
    result |= {"data_version": version, "card": cards["loo/full"]}
    decision |= {
        "primary": {"metric": params.evaluate.primary_metric, "card": cards["loo/full"]},
        "skipped_models": skipped,
        "not_compared": sorted(set(trained_models(models_dir, "loo")) - set(only))
        if only is not None
        else [],
        "data_version": version,
    }
    # metrics.json: always written, and a fresh clone holds it (git tracks it). `dvc repro`
    # removes every output before running the stage, which can leave the catalogue.json that
    # earlier versions of this stage wrote.
    mine = ("metrics.json", "catalogue.json")
    with staged_dir(out_dir, [features_dir, models_dir], owned=mine) as tmp:
        write_json(cards, tmp / "cards.json")
        write_json(_metrics_json(scored), tmp / "metrics.json")
        pl.DataFrame([_flat_row(row) for row in rows]).write_csv(tmp / "metrics.csv")
        for protocol, models in scored.items():
            for name, s in models.items():
                folder = tmp / "per_user" / protocol
                folder.mkdir(parents=True, exist_ok=True)
                s.per_user.write_parquet(folder / f"{name}.parquet")
        report.write_plot_data(scored, stats, params.evaluate.primary_metric, tmp / "plots")
        write_json(result, tmp / "comparison.json")
        write_json(decision, tmp / "decision.json")
        text = report.write_reports(
            rows,
            result,
            scored,
            stats,
            tmp,
            params.evaluate.bootstrap_samples,
            params.seed,
            run=run_metadata(scored["loo"], models_dir, version, params),
            curves=training_curves(scored["loo"], models_dir),
        )
    loo = scored["loo"]
    return {"models": {n: s.full for n, s in loo.items()}, "decision": decision, "report": text}


# The files whose last commit identifies the code and parameters of a run. Not HEAD: committing
# the run's own outputs (dvc.lock, metrics.json) must not change the report DVC has hashed.
CODE_PATHS = ("tasks/*.py", "recsys_models/*.py", "params.yaml", "dvc.yaml")


def code_commit() -> str | None:
    """The last git commit of the code and parameters in the working directory (12 digits),
    with "+ uncommitted changes" when the working tree differs from it; None outside a git
    checkout or without git."""
    git = ["git", "-c", "core.quotePath=false"]
    try:
        log = subprocess.run(
            [*git, "log", "-1", "--format=%H", "--", *CODE_PATHS],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if log.returncode or not log.stdout.strip():
            return None
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return log.stdout.strip()[:12] + (" + uncommitted changes" if changed.stdout.strip() else "")


def run_metadata(
    loo: dict[str, Any], models_dir: Path, version: dict[str, Any], params: Params
) -> dict[str, Any]:
    """What the report's figures came from: the code's commit, the data version, each scored
    model's weights (sha256 of models/<name>/weights.pt) or served version, and the evaluate
    parameters (less the folders, which say where, not how)."""
    models = {}
    for name in loo:
        if "@" in name:  # the registry's champion, scored from its exported artifact
            model, served = name.split("@", 1)
            models[name] = f"exported {model} version {served} (served artifact, onnxruntime)"
        else:
            sha = read_record(model_dir(models_dir, name)).get("weights_sha256")
            models[name] = f"weights sha256 {str(sha)[:12]}"
    fields = asdict(params.evaluate)
    for where in ("out", "artifacts"):
        fields.pop(where)
    flat = {"seed": params.seed}
    for key, value in fields.items():
        if isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value
    return {"code_commit": code_commit(), "data_version": version, "models": models, "params": flat}


def training_curves(loo: dict[str, Any], models_dir: Path) -> dict[str, list[float]]:
    """Validation NDCG@10 per epoch of each scored gradient model (models/<name>/dvclive)."""
    curves = {}
    for name in loo:
        if "@" not in name and spec(name).kind == GRADIENT:
            curve = validation_curve(model_dir(models_dir, name))
            if curve:
                curves[name] = curve
    return curves


def _check_params(params: Params) -> None:
    p = params.evaluate
    if "loo" not in p.protocols:
        raise RecsysError("params.yaml: evaluate.protocols must include loo (the primary one)")
    if p.primary_metric not in PRIMARY_METRICS:
        raise RecsysError(
            f"params.yaml: evaluate.primary_metric {p.primary_metric!r} is not one of "
            + ", ".join(PRIMARY_METRICS)
        )


def score_all(
    features_dir: Path,
    models_dir: Path,
    version: dict[str, Any],
    params: Params,
    only: Sequence[str] | None = None,
) -> tuple[dict[str, dict[str, Scored]], CatalogueStats, list[dict[str, str]]]:
    """Every trained model on these features, per protocol; the leave-one-out catalogue
    figures; and the models skipped because they were trained on other features."""
    with _cluster(params) as client:
        return _score_all(features_dir, models_dir, version, params, client, only)


@contextlib.contextmanager
def _cluster(params: Params) -> Iterator[Any]:
    """evaluate.parallel dask: a client of train.dask_address, or of a local cluster of
    train.workers processes (one thread each) for the stage's duration; otherwise None."""
    if params.evaluate.parallel != "dask":
        yield None
        return
    from distributed import Client, LocalCluster  # heavy: only when asked for

    train = params.train
    if train.dask_address:
        with Client(train.dask_address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=train.workers, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _score_all(
    features_dir: Path,
    models_dir: Path,
    version: dict[str, Any],
    params: Params,
    client: Any,
    only: Sequence[str] | None,
) -> tuple[dict[str, dict[str, Scored]], CatalogueStats, list[dict[str, str]]]:
    scored: dict[str, dict[str, Scored]] = {}
    skipped: list[dict[str, str]] = []
    primary_stats = None
    for protocol in params.evaluate.protocols:
        names = [n for n in trained_models(models_dir, protocol) if only is None or n in only]
        if not names:
            if protocol == "loo":
                raise RecsysError(f"{models_dir}: no trained model; run `recsys train` first")
            print(f"evaluate: no model trained on the {protocol} protocol; skipped")
            continue
        data = load_features(features_dir, protocol)
        stats = CatalogueStats(data)
        primary_stats = stats if protocol == "loo" else primary_stats
        scored[protocol] = {}
        for name in names:
            folder = model_dir(models_dir, name, protocol)
            stale = staleness(folder, version["features_manifest_sha256"], protocol)
            if stale:  # e.g. a model dropped from train.models before the data changed
                print(f"evaluate: skipped {folder}: {stale}")
                skipped.append({"model": name, "protocol": protocol, "reason": stale})
                continue
            net = load_model(folder, data)
            scored[protocol][name] = score_model(net, data, name, protocol, params, stats, client)
            print(f"evaluate: {protocol} {name} in {scored[protocol][name].seconds:.2f} s")
        if protocol == "loo":
            _score_served_champion(scored["loo"], features_dir, models_dir, data, params, stats)
    if not scored["loo"]:
        raise RecsysError(
            f"{models_dir}: no model trained on these features; retrain (recsys train): "
            + "; ".join(f"{s['model']} {s['reason']}" for s in skipped)
        )
    return {protocol: m for protocol, m in scored.items() if m}, primary_stats, skipped


def served_key(pointer: dict[str, Any]) -> str:
    """The name the served champion is evaluated under, apart from models/<name>."""
    return f"{pointer['model']}@{pointer['version']}"


def _score_served_champion(
    loo: dict[str, Scored],
    features_dir: Path,
    models_dir: Path,
    data: FeatureData,
    params: Params,
    stats: CatalogueStats,
) -> None:
    """Score the registry's champion from the artifact the service serves (its ONNX graphs and
    id maps, through onnxruntime), under `name@version`. models/<name> may hold a model trained
    since; when it holds the champion's own weights it is not a challenger of itself."""
    pointer = read_champion(Path(params.evaluate.artifacts))
    if pointer is None:
        return
    folder = Path(params.evaluate.artifacts) / pointer["model"] / pointer["version"]
    try:
        served = ServedModel(folder, pointer.get("manifest_sha256"))
    except RecsysError as exc:
        print(f"evaluate: the registry's champion cannot be scored as served: {exc}")
        return
    scorer = RemappedScorer(served, item_ids(features_dir), user_ids(features_dir))
    key = served_key(pointer)
    loo[key] = score_model(scorer, data, key, "loo", params, stats)
    print(f"evaluate: loo {key} (served artifact, onnxruntime) in {loo[key].seconds:.2f} s")
    name = pointer["model"]
    trained = model_dir(models_dir, name)
    exported = served.manifest.get("params", {}).get("weights_sha256")
    if name in loo and read_record(trained).get("weights_sha256") == exported:
        del loo[name]
        print(f"evaluate: {trained} holds the champion's own weights: not a challenger of itself")


def decide(
    loo: dict[str, Scored],
    stats: CatalogueStats,
    features_dir: Path,
    params: Params,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Champion vs challengers on the leave-one-out users: the comparison and the decision."""
    p = params.evaluate
    primary = {name: s.full[p.primary_metric] for name, s in loo.items()}
    registry = read_champion(Path(p.artifacts))
    served = served_key(registry) if registry else None
    try:
        champion, source = comparison.choose_champion(primary, registry, p, served)
    except ValueError as exc:
        raise RecsysError(f"evaluate: {exc}") from exc
    known = _served_items(Path(p.artifacts), registry) if champion == served else None
    new_items = _new_item_rows(loo[champion].per_user, known, features_dir)
    masks = comparison.segment_masks(
        loo[champion].per_user, p, stats.head_threshold(p.segments.head_item_fraction), new_items
    )
    result = comparison.compare(
        {name: s.per_user for name, s in loo.items()},
        {name: s.beyond for name, s in loo.items()},
        champion,
        masks,
        p,
        params.seed,
    )
    result |= {"champion_source": source, "registry": registry}
    decision = {
        "champion": champion,
        "champion_source": source,
        "verdict": result["verdict"],
        "alpha": result["alpha"],
        "correction": result["correction"],
        "evidence": [
            {k: v for k, v in r.items() if k != "segments"} for r in result["challengers"]
        ],
        "guardrail_thresholds": dict(vars(p.guardrails)),
    }
    return result, decision


def metric_rows(
    scored: dict[str, dict[str, Scored]], cards: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per model and protocol card; the card travels inside the row."""
    rows = []
    for protocol, models in scored.items():
        for name, s in models.items():
            for kind, values in (("full", s.full), ("sampled", s.sampled), ("beyond", s.beyond)):
                card = cards[f"{protocol}/{kind}"]
                users = len(s.per_user)
                rows.append({"model": name, "card": card, "users": users, "metrics": values})
    return rows


def _flat_row(row: dict[str, Any]) -> dict[str, Any]:
    card = row["card"]
    sampler = card["sampler"] or {}
    return {
        "model": row["model"],
        "protocol": card["id"],
        "split": card["split"],
        "ranking": card["ranking"].split(" ")[0],
        "candidates": card["candidates"],
        "sampler_n": sampler.get("n"),
        "sampler_seed": sampler.get("seed"),
        "ks": " ".join(map(str, card["ks"])),
        "seen_items": "removed",
        "data_version": card["data_version"]["features_manifest_sha256"][:12],
        "users": row["users"],
        **{key: round(value, 6) for key, value in row["metrics"].items()},
    }


# The figures `dvc metrics` and `dvc exp show` show (full ranking, beyond accuracy at 10):
# few enough to read in a terminal; metrics.csv holds every figure of every card.
SUMMARY_FULL = ("ndcg@10", "hr@10", "mrr")
SUMMARY_BEYOND = ("coverage@10",)


def _metrics_json(scored: dict[str, dict[str, Scored]]) -> dict[str, Any]:
    """{protocol: {model: {ndcg@10, hr@10, mrr, coverage@10, users}}}, rounded to 4 digits.
    Git tracks this file (.gitignore), so `dvc metrics diff` has a baseline at HEAD."""
    return {
        protocol: {
            name: {k: round(s.full[k], 4) for k in SUMMARY_FULL}
            | {k: round(s.beyond[k], 4) for k in SUMMARY_BEYOND}
            | {"users": len(s.per_user)}
            for name, s in models.items()
        }
        for protocol, models in scored.items()
    }


def _served_items(artifacts: Path, registry: dict[str, Any]) -> set[str] | None:
    """The item ids the served champion's artifact knows: the data it was trained on. Read
    from the registry, not kept by this stage, so the stage's outputs follow from its inputs
    (a fresh clone's run writes what a long-lived checkout's does)."""
    try:
        item_map = pl.read_parquet(champion_folder(artifacts, registry) / "item_map.parquet")
    except (OSError, RecsysError, pl.exceptions.PolarsError):
        return None  # the champion's artifact is unreadable: said where it is scored
    return set(item_map["item_id"].cast(pl.String).to_list())


def _new_item_rows(
    per_user: pl.DataFrame, known: set[str] | None, features_dir: Path
) -> np.ndarray | None:
    """Per row, whether its target item is one the served champion never saw (None: no
    served champion)."""
    if known is None:
        return None
    ids = item_ids(features_dir)
    return np.array([ids[t] not in known for t in per_user["target"].to_numpy()], dtype=bool)
