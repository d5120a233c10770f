"""The classic families beside the deep models on MovieLens-100K (issue 8), and two peers.

1. Every model of the registry (recsys_models/registry.py) trained by the real `recsys train`
   command in its own process (wall time from the clock, train seconds from its metrics.json),
   then scored on the leave-one-out test split with the project's full-ranking metric code:
   NDCG@10, HR@10 and catalogue coverage@10 (distinct items in all test users' top-10, seen items
   removed, over the catalogue size).
2. `implicit`'s ALS (bench/peer_classic.py in .venv-peers) fitted on the very training matrix our
   ALS sees, its factors ranked by the same metric code: the `implicit_als` row.
3. Rating MF against scikit-surprise's SVD (its defaults) on the same 5-fold split of the
   training ratings: RMSE and fit seconds per fold. Our side runs the model's own loss and
   optimiser in a bare loop for a fixed number of epochs (no Lightning, no validation), with one
   torch thread, as surprise's fit is a bare single-threaded loop.

Rows are merged by model into bench/results/classic.json (a rerun of some models keeps the
others' rows). Writes bench/results/classic.json and bench/results/classic.md.

    python bench/bench_classic.py                              # everything
    python bench/bench_classic.py --models ease als implicit_als --no-rating
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, run_timed, torch_info, write_results  # noqa: E402
from recsys_models.registry import model_names  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PEERS = ["implicit_als"]
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = ROOT / "bench" / "peer_classic.py"
TEST_KEYS = ("ndcg@10", "hr@10", "mrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = list(model_names()) + PEERS
    parser.add_argument("--models", nargs="+", default=choices, choices=choices)
    parser.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-rating", action="store_true", help="skip rating MF vs SVD")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rating-epochs", type=int, default=4, help="our rating MF's epochs")
    parser.add_argument(
        "--max-epochs", type=int, help="override train.max_epochs (short checks only)"
    )
    args = parser.parse_args()

    from tasks.feature_store import load_features
    from tasks.params import load_params

    params = load_params(args.params)
    data = load_features(args.features)
    rows: list[dict] = []
    result = merge(args.out / "classic.json", rows, None)
    with tempfile.TemporaryDirectory(prefix="bench-classic-") as tmp:
        if args.max_epochs:  # a copy of params.yaml with fewer epochs, for short checks
            import yaml

            raw = yaml.safe_load(args.params.read_text())
            raw["train"]["max_epochs"] = args.max_epochs
            args.params = Path(tmp) / "params.yaml"
            args.params.write_text(yaml.safe_dump(raw))
        for name in args.models:
            load_before = os.getloadavg()[1]
            started = dt.datetime.now().isoformat(timespec="seconds")
            if name == "implicit_als":
                row = bench_implicit(data, params, Path(tmp) / name)
            else:
                row = bench_ours(name, data, args, Path(tmp) / name)
            row |= {
                "started": started,
                "load_avg_5min_before_after": [round(load_before, 2), round(os.getloadavg()[1], 2)],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            result = write(args.out, rows, None)  # after every model: a long run keeps its rows
        if not args.no_rating:
            rating = bench_rating(data, params, args, Path(tmp) / "rating")
            print(json.dumps(rating), flush=True)
            result = write(args.out, rows, rating)
    print(markdown(result))


def write(out: Path, rows: list[dict], rating: dict | None) -> dict:
    result = merge(out / "classic.json", rows, rating)
    write_results(out, "classic", result, markdown(result))
    return result


def bench_ours(name: str, data, args, out: Path) -> dict:
    from tasks.model_store import load_model, read_metrics
    from tasks.train import evaluate_model

    cmd = [sys.executable, "-m", "cli.main", "train", "--model", name]
    cmd += ["--features", str(args.features), "--out", str(out), "--params", str(args.params)]
    wall, rss = run_timed(cmd, out.parent / f"{name}.log")
    val = read_metrics(out)
    net = load_model(out, data)
    test = evaluate_model(net, data, "test")
    return {
        "model": name,
        "test": {k: round(test[k], 4) for k in TEST_KEYS},
        "coverage@10": round(coverage_at_10(data, net.score), 4),
        "val_ndcg@10": round(val["ndcg@10"], 4),
        "epochs": val["epochs"],
        "best_epoch": val["best_epoch"],
        "train_seconds": val["train_seconds"],
        "process_wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
        "test_users": test["users"],
        "machine": f"{machine()}, {torch_info()}",
    }


def bench_implicit(data, params, folder: Path) -> dict:
    """implicit's ALS on our training matrix with our ALS's settings; ranked by our code.

    implicit takes the confidence itself as the matrix value (its solver adds value - 1 to the
    unobserved weight 1), so our confidence 1 + alpha is its alpha = 1 + alpha on a binary matrix.
    """
    import torch

    from recsys_models import als
    from tasks.model_store import model_config

    if not PEER_PYTHON.is_file():
        raise SystemExit(f"{PEER_PYTHON}: missing; run `make .venv-peers` first")
    config = model_config("als", params.train.section("als"), "train.als")
    inputs, out = folder / "input", folder / "out"
    inputs.mkdir(parents=True)
    np.save(inputs / "users.npy", data.train_users)
    np.save(inputs / "items.npy", data.train_items)
    np.save(inputs / "shape.npy", np.array([data.n_users + 1, data.n_items + 1]))
    threads = torch.get_num_threads()  # the same cores our ALS's torch uses
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "als", "--data", str(inputs), "--out", str(out)]
    cmd += ["--factors", str(config.factors), "--reg", str(config.reg)]
    cmd += ["--alpha", str(1.0 + config.alpha), "--iterations", str(config.iterations)]
    cmd += ["--threads", str(threads), "--seed", str(params.seed)]
    wall, rss = run_timed(cmd, folder.parent / "implicit_als.log")
    peer = json.loads((out / "result.json").read_text())
    users = torch.from_numpy(np.load(out / "user_factors.npy"))
    items = torch.from_numpy(np.load(out / "item_factors.npy"))
    net = als.ALS(users, items)
    test = score(net.score, data, "test")
    val = score(net.score, data, "val")
    return {
        "model": "implicit_als",
        "test": {k: round(test[k], 4) for k in TEST_KEYS},
        "coverage@10": round(coverage_at_10(data, net.score), 4),
        "val_ndcg@10": round(val["ndcg@10"], 4),
        "epochs": config.iterations,
        "best_epoch": config.iterations,
        "train_seconds": peer["fit_seconds"],
        "process_wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
        "test_users": test["users"],
        "machine": f"{machine()}, {peer['library']} ({peer['threads']} threads)",
    }


def bench_rating(data, params, args, folder: Path) -> dict:
    """Rating MF vs surprise's SVD on the same k folds of the training ratings."""
    import torch

    from recsys_models import rating_mf
    from tasks.model_store import model_config

    if not PEER_PYTHON.is_file():
        raise SystemExit(f"{PEER_PYTHON}: missing; run `make .venv-peers` first")
    config = model_config("rating_mf", params.train.section("rating_mf"), "train.rating_mf")
    table = np.stack([data.train_users, data.train_items, data.train_ratings], 1)
    fold_of = np.random.default_rng(params.seed).permutation(len(table)) % args.folds
    inputs, out = folder / "input", folder / "out"
    inputs.mkdir(parents=True)
    for k in range(args.folds):
        np.save(inputs / f"fold_{k}_train.npy", table[fold_of != k])
        np.save(inputs / f"fold_{k}_test.npy", table[fold_of == k])
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "svd", "--data", str(inputs), "--out", str(out)]
    cmd += ["--seed", str(params.seed)]
    run_timed(cmd, folder.parent / "surprise_svd.log")
    peer = json.loads((out / "result.json").read_text())

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ours_rmse, ours_seconds, svd_rmse, mean_rmse = [], [], [], []
    try:
        for k in range(args.folds):
            train, test = table[fold_of != k], table[fold_of == k]
            fold = dataclasses.replace(
                data,
                train_users=train[:, 0].astype(np.int64),
                train_items=train[:, 1].astype(np.int64),
                train_ratings=train[:, 2].astype(np.float32),
            )
            module, datamodule = rating_mf.build(fold, config, params.seed)
            optimiser = module.configure_optimizers()
            start = time.perf_counter()
            for _ in range(args.rating_epochs):
                for batch in datamodule.train_dataloader():
                    optimiser.zero_grad()
                    module.loss(batch).backward()
                    optimiser.step()
            ours_seconds.append(round(time.perf_counter() - start, 3))
            ours_rmse.append(rating_mf.rmse(module.model, rating_mf.rating_rows(*test.T)))
            predicted = np.load(out / f"fold_{k}_pred.npy")
            svd_rmse.append(float(np.sqrt(np.mean((predicted - test[:, 2]) ** 2))))
            mean_rmse.append(float(np.sqrt(np.mean((train[:, 2].mean() - test[:, 2]) ** 2))))
    finally:
        torch.set_num_threads(threads)
    return {
        "ratings": len(table),
        "folds": args.folds,
        "rating_mf": {
            "rmse": [round(r, 4) for r in ours_rmse],
            "fit_seconds": ours_seconds,
            "epochs": args.rating_epochs,
            "config": dataclasses.asdict(config),
            "threads": 1,
        },
        "surprise_svd": {
            "rmse": [round(r, 4) for r in svd_rmse],
            "fit_seconds": peer["fit_seconds"],
        },
        "global_mean": {"rmse": [round(r, 4) for r in mean_rmse]},
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
    }


def score(score_fn, data, split: str) -> dict:
    from recsys_models.data import eval_loader
    from recsys_models.metrics import evaluate

    return evaluate(score_fn, eval_loader(data, split, 512))


def coverage_at_10(data, score_fn) -> float:
    """Distinct items in the test users' top-10 (seen items and padding removed) / catalogue."""
    import torch

    from recsys_models.data import eval_loader

    shown = torch.zeros(data.n_items + 1, dtype=torch.bool)
    with torch.no_grad():
        for batch in eval_loader(data, "test", 512):
            scores = score_fn(batch["user"], batch["history"]).float().clone()
            scores[:, 0] = float("-inf")
            scores[batch["seen_rows"], batch["seen_cols"]] = float("-inf")
            shown[scores.topk(10, dim=1).indices.reshape(-1)] = True
    return float(shown[1:].sum()) / data.n_items


def merge(previous: Path, rows: list[dict], rating: dict | None) -> dict:
    """This run's rows replace the same models' rows of the previous result."""
    kept: dict[str, dict] = {}
    old: dict = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        kept = {r["model"]: r for r in old.get("rows", [])}
    kept |= {r["model"]: r for r in rows}
    order = list(model_names()) + PEERS
    return {
        "benchmark": "MovieLens-100K, leave-one-out, full ranking (test split); rating MF vs SVD",
        "rows": sorted(kept.values(), key=lambda r: order.index(r["model"])),
        "rating": rating or old.get("rating"),
    }


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/classic.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift.
    `rating` is absent when the run had no rating comparison."""
    machines = sorted({r["machine"] for r in result["rows"]})
    lines = [
        "| model | test NDCG@10 | test HR@10 | coverage@10 | val NDCG@10 | epochs (best) "
        "| train s | process s | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(result["rows"], key=lambda r: -r["test"]["ndcg@10"]):
        load = max(r["load_avg_5min_before_after"])
        lines.append(
            f"| {r['model']} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} "
            f"| {r['coverage@10']:.3f} | {r['val_ndcg@10']:.4f} "
            f"| {r['epochs']} ({r['best_epoch']}) "
            f"| {r['train_seconds']:.1f} | {r['process_wall_s']:.1f} | {load:.1f} |"
        )
    blocks = {
        "machine": "Machine: " + "; ".join(machines) + ". MovieLens-100K after the 5-core "
        "filter, leave-one-out by time, full ranking over the catalogue with seen items removed "
        "(the project's metric code for every row, peers included); test split.",
        "models": "\n".join(lines),
    }
    rating = result.get("rating")
    if rating:
        ours, svd, mean = rating["rating_mf"], rating["surprise_svd"], rating["global_mean"]
        blocks["rating"] = "\n".join(
            [
                f"Rating prediction, {rating['folds']}-fold split of the {rating['ratings']} "
                "training ratings (same folds for both; mean over folds, fit seconds summed):",
                "",
                "| model | RMSE | fit s (all folds) |",
                "| --- | ---: | ---: |",
                f"| rating_mf ({ours['epochs']} epochs, 1 torch thread) "
                f"| {np.mean(ours['rmse']):.4f} | {sum(ours['fit_seconds']):.2f} |",
                f"| surprise SVD (defaults) | {np.mean(svd['rmse']):.4f} "
                f"| {sum(svd['fit_seconds']):.2f} |",
                f"| global mean | {np.mean(mean['rmse']):.4f} | - |",
            ]
        )
    return blocks


def markdown(result: dict) -> str:
    t = tables(result)
    return "\n\n".join(t[k] for k in ("machine", "models", "rating") if k in t) + "\n"


if __name__ == "__main__":
    main()
