"""The evaluate stage: data/features + models/* -> reports/evaluation/ (DESIGN.md protocol).

Every trained model is scored on the same test users of each protocol: leave-one-out by time
(models/<name>/, the primary protocol) and the global temporal split (models/<name>/temporal/).
Scores stream through batches of users sized from a memory budget, so the catalogue's size never
decides whether the evaluation fits in memory. Per user it records the full-ranking metrics, the
sampled-ranking ones (labelled: for comparison with published tables only) and the
beyond-accuracy figures of the top-K list; tasks/comparison.py then decides champion vs
challenger and tasks/report.py writes what people read.

Layout of reports/evaluation/ (written as one folder, swapped in atomically):
- metrics.json      every model's summary per protocol, for `dvc metrics show/diff`
- metrics.csv       the same, one row per (model, protocol card), the card's fields as columns
- cards.json        the protocol cards: split, candidates, sampler and seed, K, seen-item filter,
                    data version
- per_user/<protocol>/<model>.parquet   the per-user figures behind every mean
- plots/*.csv       NDCG@10 by history length, the popularity-bias curve (`dvc plots show`)
- comparison.json, decision.json        champion vs challenger (tasks/comparison.py)
- report.md, report.html                tasks/report.py
- catalogue.json    the items of this data version and of the one before it (new-item segment)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.errors import RecsysError
from tasks.io import file_sha256, staged_dir, write_json
from tasks.params import MODEL_NAMES, EvaluateParams, Params

KS = (5, 10, 20)
BEYOND_K = 10
HISTORY_BUCKETS = (0, 20, 50, 100, 200, 500)  # lower edges, for NDCG@10 by history length
PRIMARY_METRICS = tuple(
    f"{name}@{k}" for name in ("ndcg", "hr", "recall", "precision") for k in KS
) + ("mrr", "auc")


def model_dir(models_root: str | Path, name: str, protocol: str = "loo") -> Path:
    """Where the train stage writes a model: models/<name>/, or models/<name>/temporal/."""
    root = Path(models_root) / name
    return root if protocol == "loo" else root / protocol


def trained_models(models_root: str | Path, protocol: str) -> list[str]:
    """The registry's models that have a complete training output for this protocol."""
    return [
        name
        for name in MODEL_NAMES
        if (model_dir(models_root, name, protocol) / "config.json").is_file()
        and (model_dir(models_root, name, protocol) / "weights.pt").is_file()
    ]


def data_version(features_dir: Path, dvc_file: Path = Path("data.dvc")) -> dict[str, Any]:
    """What identifies the data: the features manifest's sha256 and the raw data's DVC hash."""
    version: dict[str, Any] = {
        "features_manifest_sha256": file_sha256(features_dir / "manifest.json")
    }
    if dvc_file.is_file():
        import yaml

        try:
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
            version["raw_md5"] = outs[0].get("md5")
        except (yaml.YAMLError, AttributeError, IndexError):
            version["raw_md5"] = None
    return version


# --- protocol cards ----------------------------------------------------------------------------

SPLITS = {
    "loo": "leave-one-out by time: each user's last interaction is the target, the one before "
    "it validation, the rest training",
    "temporal": "global temporal: trained on interactions before the validation cut; targets are "
    "every item a user consumed after the test cut, history everything before it",
}


def protocol_card(
    split: str, kind: str, version: dict[str, Any], params: EvaluateParams, seed: int
) -> dict[str, Any]:
    """Everything a number depends on besides the model; a row without it is never shown."""
    card: dict[str, Any] = {
        "id": f"{split}/{kind}",
        "split": split,
        "split_detail": SPLITS[split],
        "ks": list(KS),
        "seen_items": "removed from the candidates (a target itself always stays)",
        "ties": "count against the model",
        "data_version": version,
    }
    if kind == "full":
        card |= {
            "ranking": "full",
            "candidates": "the whole catalogue but padding and the user's seen items",
            "sampler": None,
        }
    elif kind == "sampled":
        card |= {
            "ranking": "sampled (not the primary figure; for comparison with published tables)",
            "candidates": f"each target and {params.sampled_negatives} sampled negatives",
            "sampler": {
                "kind": "uniform without replacement over items the user never touched",
                "n": params.sampled_negatives,
                "seed": seed,
                "per_user_stream": "numpy default_rng([seed, user])",
            },
        }
    else:
        card |= {
            "ranking": f"top-{BEYOND_K} lists of the full ranking (coverage at every K)",
            "candidates": "the whole catalogue but padding and the user's seen items",
            "sampler": None,
        }
    return card


def same_protocol(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one card shared by rows about to be put in one table; mixing protocols is refused."""
    cards = {json.dumps(row["card"], sort_keys=True) for row in rows}
    if len(cards) > 1:
        ids = sorted({row["card"]["id"] for row in rows})
        raise RecsysError(f"a metrics table cannot mix protocols ({', '.join(ids)})")
    return rows[0]["card"] if rows else {}


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

    def __init__(self, data):
        import torch
        from scipy.stats import rankdata

        counts = np.asarray(data.item_popularity, dtype=np.float64)
        real = counts[1:]
        self.popularity = counts
        self.percentile = np.zeros_like(counts)
        self.percentile[1:] = (rankdata(real, method="average") - 1) / max(len(real) - 1, 1)
        users = max(int(np.unique(data.train_users).size), 1)
        self.self_information = -np.log2((counts + 1.0) / (users + 1.0))
        genres = torch.as_tensor(np.asarray(data.item_genres, dtype=np.float32))
        self.unit_genres = torch.nn.functional.normalize(genres, dim=1)

    def head_threshold(self, fraction: float) -> float:
        """The smallest training count among the most popular `fraction` of the catalogue."""
        real = np.sort(self.popularity[1:])[::-1]
        top = max(1, int(math.ceil(len(real) * fraction)))
        return float(real[top - 1])


def score_model(
    net, data, name: str, protocol: str, params: Params, stats: CatalogueStats | None = None
) -> Scored:
    """Per-user full-ranking, sampled-ranking and beyond-accuracy figures of one model."""
    import torch

    from recsys_models.data import EvalDataset
    from recsys_models.metrics import sample_negatives, sampled_ranks, set_metrics, target_positions

    p = params.evaluate
    stats = stats or CatalogueStats(data)  # the same for every model of a protocol: pass it
    ds = EvalDataset(data, "test")
    touched = _touched(data)
    size = batch_size(data.n_items, p.memory_budget_mb)
    recommended = np.zeros(data.n_items + 1, dtype=np.int64)
    covered = {k: np.zeros(data.n_items + 1, dtype=bool) for k in KS}
    columns: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    net = net.to(torch.device("cpu")).eval()
    with torch.no_grad():
        for lo in range(0, len(ds), size):
            batch = ds.collate(ds.users[lo : lo + size].tolist())
            users = batch["user"]
            scores = net.score(users, batch["history"]).float()
            targets = batch["targets"]
            positions, beaten = target_positions(
                scores, targets, batch["seen_rows"], batch["seen_cols"]
            )
            out = {f"full_{k}": v for k, v in set_metrics(positions, beaten, KS).items()}
            negatives = sample_negatives(
                data.n_items,
                touched[0],
                touched[1],
                users.numpy(),
                batch["target"].numpy(),
                n=p.sampled_negatives,
                seed=params.seed,
            )
            ranks = sampled_ranks(scores, targets, torch.from_numpy(negatives)).float()
            out |= _sampled_metrics(ranks, targets > 0)
            top = _top_lists(scores, batch["seen_rows"], batch["seen_cols"], max(KS))
            for k in KS:
                covered[k][top[:, :k].reshape(-1).numpy()] = True
            recommended += np.bincount(
                top[:, :BEYOND_K].reshape(-1).numpy(), minlength=len(recommended)
            )
            out |= _beyond(top[:, :BEYOND_K], stats)
            history = np.diff(ds.indptr)[users.numpy()]
            out |= {
                "user_idx": users,
                "history_len": torch.from_numpy(history),
                "n_targets": (targets > 0).sum(dim=1),
                "target": batch["target"],
            }
            for key, value in out.items():
                columns.setdefault(key, []).append(np.asarray(value))
    seconds = time.perf_counter() - start
    per_user = pl.DataFrame({key: np.concatenate(parts) for key, parts in columns.items()})
    per_user = per_user.with_columns(
        pl.Series("target_popularity", stats.popularity[per_user["target"].to_numpy()])
    )

    def means(prefix: str) -> dict[str, float]:
        names = [c for c in per_user.columns if c.startswith(prefix)]
        return {c.removeprefix(prefix): float(per_user[c].mean()) for c in names}

    full, sampled, beyond = means("full_"), means("sampled_"), means("beyond_")
    beyond |= {f"coverage@{k}": float(covered[k][1:].mean()) for k in KS}
    return Scored(name, protocol, per_user, full, sampled, beyond, recommended, seconds)


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


def _sampled_metrics(ranks, valid) -> dict[str, Any]:
    """Per user, the mean over their targets of each target's sampled-ranking metrics."""
    import torch

    n = valid.sum(dim=1).clamp(min=1).float()
    ranks = ranks.float()
    out = {}
    for k in KS:
        hit = (ranks <= k) & valid
        out[f"sampled_hr@{k}"] = hit.sum(dim=1) / n
        gain = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), 0.0)
        out[f"sampled_ndcg@{k}"] = gain.sum(dim=1) / n
    out["sampled_mrr"] = torch.where(valid, 1.0 / ranks, 0.0).sum(dim=1) / n
    return out


def _top_lists(scores, seen_rows, seen_cols, k: int):
    """[B, k] the items each user would be shown: padding and seen items never appear."""
    import torch

    masked = torch.where(torch.isnan(scores), float("-inf"), scores.clone())
    masked[:, 0] = float("-inf")
    if seen_rows.numel():
        masked[seen_rows, seen_cols] = float("-inf")
    return torch.topk(masked, min(k, masked.shape[1] - 1), dim=1).indices


def _beyond(top, stats: CatalogueStats) -> dict[str, Any]:
    """Novelty, intra-list diversity (genre cosine distance) and popularity percentile per list."""
    items = top.numpy()
    vectors = stats.unit_genres[top]  # [B, K, G]
    similarity = vectors @ vectors.transpose(1, 2)
    k = top.shape[1]
    pairs = max(k * (k - 1), 1)
    off_diagonal = similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)
    return {
        f"beyond_novelty@{BEYOND_K}": stats.self_information[items].mean(axis=1),
        f"beyond_diversity@{BEYOND_K}": (1.0 - off_diagonal / pairs).numpy(),
        f"beyond_popularity_percentile@{BEYOND_K}": stats.percentile[items].mean(axis=1),
    }


# --- the stage ---------------------------------------------------------------------------------


def evaluate(
    features_dir: Path,
    models_dir: Path,
    out_dir: Path,
    params: Params,
    dvc_file: Path = Path("data.dvc"),
) -> dict[str, Any]:
    """Score every trained model under each protocol, compare challengers with the champion,
    write reports/evaluation/ atomically; return the summary and the decision."""
    from tasks import comparison, report
    from tasks.registry import read_champion
    from tasks.train import load_features, load_model

    features_dir, models_dir, out_dir = Path(features_dir), Path(models_dir), Path(out_dir)
    p = params.evaluate
    if "loo" not in p.protocols:
        raise RecsysError("params.yaml: evaluate.protocols must include loo (the primary one)")
    if p.primary_metric not in PRIMARY_METRICS:
        raise RecsysError(
            f"params.yaml: evaluate.primary_metric {p.primary_metric!r} is not one of "
            + ", ".join(PRIMARY_METRICS)
        )
    if not (features_dir / "manifest.json").is_file():
        raise RecsysError(f"{features_dir / 'manifest.json'}: not found; run `recsys features`")
    version = data_version(features_dir, dvc_file)
    scored: dict[str, dict[str, Scored]] = {}
    skipped: list[dict[str, str]] = []
    primary_stats = None
    for protocol in p.protocols:
        names = trained_models(models_dir, protocol)
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
            stale = _stale(folder, version["features_manifest_sha256"], protocol)
            if stale:  # e.g. a model dropped from train.models before the data changed
                print(f"evaluate: skipped {folder}: {stale}")
                skipped.append({"model": name, "protocol": protocol, "reason": stale})
                continue
            net = load_model(folder, data, params.seed)
            scored[protocol][name] = score_model(net, data, name, protocol, params, stats)
            print(f"evaluate: {protocol} {name} in {scored[protocol][name].seconds:.2f} s")

    if not scored["loo"]:
        raise RecsysError(
            f"{models_dir}: no model trained on these features; retrain (recsys train): "
            + "; ".join(f"{s['model']} {s['reason']}" for s in skipped)
        )
    scored = {protocol: models for protocol, models in scored.items() if models}
    cards = {
        f"{protocol}/{kind}": protocol_card(protocol, kind, version, p, params.seed)
        for protocol in scored
        for kind in ("full", "sampled", "beyond")
    }
    rows = metric_rows(scored, cards)
    loo = scored["loo"]
    primary = {name: s.full[p.primary_metric] for name, s in loo.items()}
    registry = read_champion(Path(p.artifacts))
    try:
        champion, source = comparison.choose_champion(primary, registry, p)
    except ValueError as exc:
        raise RecsysError(f"evaluate: {exc}") from exc
    catalogue = _catalogue(features_dir, out_dir / "catalogue.json", version)
    new_items = _new_item_rows(loo[champion].per_user, catalogue, features_dir)
    stats = primary_stats
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
    result |= {"champion_source": source, "registry": registry, "data_version": version}
    result["card"] = cards["loo/full"]
    decision = {
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "champion": champion,
        "champion_source": source,
        "primary": {"metric": p.primary_metric, "card": cards["loo/full"]},
        "verdict": result["verdict"],
        "evidence": [
            {k: v for k, v in r.items() if k != "segments"} for r in result["challengers"]
        ],
        "guardrail_thresholds": dict(vars(p.guardrails)),
        "skipped_models": skipped,
        "data_version": version,
    }
    with staged_dir(out_dir) as tmp:
        write_json(cards, tmp / "cards.json")
        write_json(_metrics_json(scored), tmp / "metrics.json")
        pl.DataFrame([_flat_row(row) for row in rows]).write_csv(tmp / "metrics.csv")
        for protocol, models in scored.items():
            for name, s in models.items():
                folder = tmp / "per_user" / protocol
                folder.mkdir(parents=True, exist_ok=True)
                s.per_user.write_parquet(folder / f"{name}.parquet")
        report.write_plot_data(scored, stats, p.primary_metric, tmp / "plots")
        write_json(result, tmp / "comparison.json")
        write_json(decision, tmp / "decision.json")
        write_json(catalogue, tmp / "catalogue.json")
        text = report.write_reports(
            rows, result, scored, stats, tmp, p.bootstrap_samples, params.seed
        )
    return {"models": {n: s.full for n, s in loo.items()}, "decision": decision, "report": text}


def _stale(folder: Path, manifest_sha: str, protocol: str) -> str | None:
    """Why a trained model cannot be scored on these features (None: it can). A model trained
    on other features would score the wrong users and items."""
    config = folder / "config.json"
    try:
        recorded = json.loads(config.read_text())["data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecsysError(f"{config}: not a model config ({exc!r})") from exc
    if recorded.get("manifest_sha256") != manifest_sha:
        return "trained on other features"
    if recorded.get("protocol", "loo") != protocol:
        return f"trained on the {recorded.get('protocol')} protocol"
    return None


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


def _metrics_json(scored: dict[str, dict[str, Scored]]) -> dict[str, Any]:
    """{protocol: {model: {full: .., sampled: .., beyond: ..}}}, rounded for `dvc metrics`."""
    return {
        protocol: {
            name: {
                "full": {k: round(v, 6) for k, v in s.full.items()},
                "sampled": {k: round(v, 6) for k, v in s.sampled.items()},
                "beyond": {k: round(v, 6) for k, v in s.beyond.items()},
                "users": len(s.per_user),
            }
            for name, s in models.items()
        }
        for protocol, models in scored.items()
    }


def _catalogue(features_dir: Path, previous_file: Path, version: dict[str, Any]) -> dict:
    """This data version's items, and the last different version's (kept across runs)."""
    items = pl.read_parquet(features_dir / "item_map.parquet")["item_id"].cast(pl.String)
    current = {"data_version": version, "item_ids": sorted(items.to_list())}
    try:
        before = json.loads(previous_file.read_text())
    except (OSError, ValueError):
        before = {}
    if before.get("current", {}).get("data_version") == version:
        return {"current": current, "previous": before.get("previous")}
    return {"current": current, "previous": before.get("current")}


def _new_item_rows(
    per_user: pl.DataFrame, catalogue: dict[str, Any], features_dir: Path
) -> np.ndarray | None:
    """Per row, whether its target item was not in the previous data version (None: no such)."""
    if not catalogue.get("previous"):
        return None
    known = set(catalogue["previous"]["item_ids"])
    item_map = pl.read_parquet(features_dir / "item_map.parquet")
    ids = np.empty(int(item_map["item_idx"].max()) + 1, dtype=object)
    ids[item_map["item_idx"].to_numpy()] = item_map["item_id"].cast(pl.String).to_list()
    return np.array([ids[t] not in known for t in per_user["target"].to_numpy()], dtype=bool)
