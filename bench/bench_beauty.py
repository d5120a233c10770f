"""Sequential recommenders on a public benchmark: Amazon Beauty as preprocessed by S3-Rec
(one user per line, with item attributes), read in place from ../shared/data/beauty/ (or
--data), never copied into the repository.

The data goes through the platform's own stages with params.yaml's defaults (ingest as a `seq`
source with the attribute JSON, validate, features: leave-one-out by time, the last item for
test, the one before for validation). Every model is trained by the real `recsys train` command
in its own process, with params.yaml's settings and only the overrides each row names (the loss
or block a variant tests): nothing is tuned on this data, and the validation NDCG@10 the
training stopped on is reported beside the test figures. Test metrics: full ranking over every
item, the user's earlier items removed (the project's metric code).

Gradient models run with three seeds (--seeds); the closed-form baselines are deterministic and
run once. Runs are kept in bench/results/beauty.json as they finish and a rerun skips the
(variant, seed) pairs already there (--force reruns them), so the benchmark can be completed
across sessions; the table says how many seeds each row has.

    make bench-beauty                                  # every variant, three seeds
    python bench/bench_beauty.py --variants sasrec --seeds 42
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import code_version, machine, run_timed, torch_info, write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work" / "beauty"
DATA = ROOT.parent / "shared" / "data" / "beauty"
TEST_KEYS = ("ndcg@10", "hr@10", "mrr")
# variant -> (registered model, parameter overrides beside params.yaml's)
IDS = "train.sasrec.item_features=false"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    # the defaults: loss auto (12,101 items -> sampled softmax), item attributes beside the ids
    "sasrec": ("sasrec", []),
    # The loss and block variants read item ids alone, as they did when they were measured:
    # each differs from sasrec-ids in one setting.
    "sasrec-ids": ("sasrec", [IDS]),
    "sasrec-ce": ("sasrec", ["train.sasrec.loss=ce", IDS]),
    "sasrec-256": (
        "sasrec",
        ["train.sasrec.negatives=256", "train.sasrec.negative_sampler=uniform", IDS],
    ),
    "sasrec-gbce": ("sasrec", ["train.sasrec.loss=gbce", IDS]),
    "esasrec": ("sasrec", ["train.sasrec.block=ligr", IDS]),
    "gru4rec": ("gru4rec", []),
    "popularity": ("popularity", []),
    "itemknn": ("itemknn", []),
    "ease": ("ease", []),
    "bpr_mf": ("bpr_mf", []),
    "two_tower": ("two_tower", []),  # item tower reads the attribute ids
}
DETERMINISTIC = {"popularity", "itemknn", "ease"}
DESCRIPTION = {
    "sasrec": "SASRec, defaults (sampled softmax, 2048 mixed negatives, item attributes)",
    "sasrec-ids": "SASRec, defaults but item ids only",
    "sasrec-ce": "SASRec, full softmax (loss ce), ids only",
    "sasrec-256": "SASRec, sampled softmax, 256 uniform negatives, ids only",
    "sasrec-gbce": "SASRec, gBCE (2048 uniform negatives, t 0.75), ids only",
    "esasrec": "eSASRec-style: LiGR blocks, defaults' sampled softmax, ids only",
    "gru4rec": "GRU4Rec, defaults (sampled softmax, 2048 mixed negatives, ids only)",
    "popularity": "popularity",
    "itemknn": "item-kNN",
    "ease": "EASE",
    "bpr_mf": "BPR-MF",
    "two_tower": "two-tower, item attributes",
}
# eSASRec paper's benchmark (arXiv 2508.06450), its repository's README: the same split.
PUBLISHED = [
    ("SASRec, original loss (reported)", 0.0318, 0.0605),
    ("HSTU (calculated)", 0.0439, 0.0788),
    ("FuXi-alpha (calculated)", 0.0451, 0.0809),
    ("eSASRec: LiGR + sampled softmax (calculated)", 0.0523, 0.0928),
    ("SASRec + sampled softmax (calculated)", 0.0531, 0.0921),
]
TARGETS = {"ndcg@10": 0.060, "hr@10": 0.098, "train_seconds": 450.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the Beauty folder")
    parser.add_argument("--work", type=Path, default=WORK, help="features and models (scratch)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--force", action="store_true", help="rerun pairs already recorded")
    parser.add_argument(
        "--select",
        nargs="+",
        metavar="KEY=VALUE",
        help="train SASRec with these overrides (seed 42) and record its validation figures "
        "only, in the selection table the defaults are chosen from; the test split is not read",
    )
    args = parser.parse_args()

    features = prepare(args.data, args.work)
    from tasks.feature_store import load_features

    data = load_features(features)
    path = args.out / "beauty.json"
    result = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    result |= {"features": describe(features), "published": PUBLISHED, "targets": TARGETS}
    if args.select:
        run = selection_run(args.select, features, args.work)
        result["selection"] = [
            r for r in result.get("selection", []) if r["overrides"] != run["overrides"]
        ] + [run]
        write_results(args.out, "beauty", result, markdown(result))
        print(json.dumps(run))
        return
    for variant in args.variants:
        for seed in args.seeds[:1] if variant in DETERMINISTIC else args.seeds:
            done = [r for r in result["runs"] if (r["variant"], r["seed"]) == (variant, seed)]
            if done and not args.force:
                continue
            run = bench_run(variant, seed, features, data, args.work)
            result["runs"] = [r for r in result["runs"] if r not in done] + [run]
            write_results(args.out, "beauty", result, markdown(result))
            print(json.dumps(run), flush=True)
    write_results(args.out, "beauty", result, markdown(result))
    print(markdown(result))


def prepare(data: Path, work: Path) -> Path:
    """ingest -> validate -> features of the benchmark with params.yaml's settings; reused
    while the raw files and the stage code are unchanged (the stages' own input checks)."""
    seq, attributes = data / "Beauty.txt", data / "Beauty_item2attributes.json"
    for file in (seq, attributes):
        if not file.is_file():
            raise SystemExit(f"{file}: missing (the S3-Rec Beauty files; see --data)")
    features = work / "features"
    if (features / "manifest.json").is_file():
        return features
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cli.main"]
    sets = [
        "--set", "ingest.source=seq", "--set", f"ingest.path={seq}",
        "--set", f"ingest.items.path={attributes}", "--set", f"ingest.out={work / 'interim'}",
        "--set", f"validate.out={work / 'validation'}", "--set", f"features.out={features}",
    ]  # fmt: skip
    for stage in ("ingest", "validate", "features"):
        run_timed([*cmd, stage, *sets], work / f"{stage}.log", cwd=ROOT)
    return features


def describe(features: Path) -> dict:
    manifest = json.loads((features / "manifest.json").read_text())
    return {"counts": manifest["counts"], "item_features": manifest["item_features"]}


def bench_run(variant: str, seed: int, features: Path, data, work: Path) -> dict:
    """One training by `recsys train`, then its test figures from the saved weights."""
    from tasks.model_store import load_model, read_metrics
    from tasks.train import evaluate_model

    model, overrides = VARIANTS[variant]
    out = work / "models" / f"{variant}-seed{seed}" / model
    cmd = [sys.executable, "-m", "cli.main", "train", "--model", model]
    cmd += ["--features", str(features), "--out", str(out)]
    for item in [*overrides, f"seed={seed}", f"features.out={features}"]:
        cmd += ["--set", item]
    load_before = os.getloadavg()[1]
    started = dt.datetime.now().isoformat(timespec="seconds")
    shutil.rmtree(out.parent, ignore_errors=True)  # a fresh training: no checkpoint resumed
    out.parent.mkdir(parents=True)
    wall, rss = run_timed(cmd, out.parent / "train.log", cwd=ROOT)
    val = read_metrics(out)
    test = evaluate_model(load_model(out, data), data, "test")
    epochs = val.get("epochs") or 0
    return {
        "variant": variant,
        "model": model,
        "overrides": overrides,
        "seed": seed,
        "test": {k: round(test[k], 4) for k in TEST_KEYS},
        "test_users": test["users"],
        "val_ndcg@10": round(val["ndcg@10"], 4),
        "loss": trained_loss(out, data.n_items),
        "epochs": epochs,
        "best_epoch": val.get("best_epoch"),
        "train_seconds": round(val["train_seconds"], 1),
        "seconds_per_epoch": round(val["train_seconds"] / epochs, 2) if epochs else None,
        "process_wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
        "started": started,
        "load_avg_5min_before_after": [round(load_before, 2), round(os.getloadavg()[1], 2)],
        "machine": f"{machine()}, {torch_info()}",
        "code": code_version(),
    }


def selection_run(overrides: list[str], features: Path, work: Path) -> dict:
    """One SASRec training with `overrides` beside params.yaml, seed 42: its validation
    figures, epochs and time. Choosing a default from these never looks at the test split."""
    from tasks.model_store import read_metrics

    # train.sasrec.dropout=0.5 -> dropout=0.5: the setting's own name, dots in the value kept
    names = [o.partition("=")[0].rsplit(".", 1)[-1] + "=" + o.partition("=")[2] for o in overrides]
    out = work / "selection" / "-".join(names) / "sasrec"
    cmd = [sys.executable, "-m", "cli.main", "train", "--model", "sasrec"]
    cmd += ["--features", str(features), "--out", str(out)]
    for item in [*overrides, "seed=42", f"features.out={features}"]:
        cmd += ["--set", item]
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    run_timed(cmd, out.parent / "train.log", cwd=ROOT)
    val = read_metrics(out)
    return {
        "overrides": overrides,
        "val": {k: round(val[k], 4) for k in TEST_KEYS},
        "epochs": val.get("epochs"),
        "train_seconds": round(val["train_seconds"], 1),
        "code": code_version(),
        "machine": f"{machine()}, {torch_info()}",
    }


def trained_loss(folder: Path, n_items: int) -> str | None:
    """The loss a sequence model actually trained with ("auto" resolved); None for others."""
    from recsys_models.sequence_training import resolve_loss

    config = json.loads((folder / "config.json").read_text()).get("config", {})
    if "loss" not in config:
        return None
    return resolve_loss(config["loss"], n_items, config["full_softmax_max_items"])


def summary_rows(result: dict) -> list[dict]:
    """One row per variant: mean and spread (population std) over its seeds."""
    rows = []
    for variant in VARIANTS:
        runs = [r for r in result["runs"] if r["variant"] == variant]
        if not runs:
            continue

        def mean(values: list[float]) -> float:
            return statistics.fmean(values)

        def spread(values: list[float]) -> float:
            return statistics.pstdev(values) if len(values) > 1 else 0.0

        ndcg = [r["test"]["ndcg@10"] for r in runs]
        hr = [r["test"]["hr@10"] for r in runs]
        per_epoch = [r["seconds_per_epoch"] for r in runs if r["seconds_per_epoch"]]
        rows.append(
            {
                "variant": variant,
                "seeds": len(runs),
                "ndcg@10": (mean(ndcg), spread(ndcg)),
                "hr@10": (mean(hr), spread(hr)),
                "mrr": mean([r["test"]["mrr"] for r in runs]),
                "val_ndcg@10": mean([r["val_ndcg@10"] for r in runs]),
                "epochs": mean([r["epochs"] for r in runs]),
                "seconds_per_epoch": mean(per_epoch) if per_epoch else None,
                "train_seconds": mean([r["train_seconds"] for r in runs]),
            }
        )
    return rows


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/beauty.json (bench/tables.py writes the README's
    and docs' blocks from the same function)."""
    head = (
        "| model | seeds | NDCG@10 | HR@10 | MRR | val NDCG@10 | epochs | s/epoch | train s |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    body = []
    for row in sorted(summary_rows(result), key=lambda r: -r["ndcg@10"][0]):
        per_epoch = row["seconds_per_epoch"]
        body.append(
            f"| {DESCRIPTION[row['variant']]} | {row['seeds']} "
            f"| {row['ndcg@10'][0]:.4f} ± {row['ndcg@10'][1]:.4f} "
            f"| {row['hr@10'][0]:.4f} ± {row['hr@10'][1]:.4f} | {row['mrr']:.4f} "
            f"| {row['val_ndcg@10']:.4f} | {row['epochs']:.0f} "
            f"| {'-' if per_epoch is None else f'{per_epoch:.1f}'} | {row['train_seconds']:.0f} |"
        )
    published = "| published (eSASRec paper's benchmark) | NDCG@10 | HR@10 |\n"
    published += "| --- | ---: | ---: |\n"
    published += "".join(f"| {name} | {n:.4f} | {h:.4f} |\n" for name, n, h in PUBLISHED)
    selection = (
        "| SASRec overrides (of the params.yaml at the run's code) | code "
        "| val NDCG@10 | val HR@10 | epochs | train s |\n"
    )
    selection += "| --- | --- | ---: | ---: | ---: | ---: |\n"
    for run in sorted(result.get("selection", []), key=lambda r: -r["val"]["ndcg@10"]):
        selection += (
            f"| {' '.join(run['overrides']) or '(defaults)'} | {run['code']} "
            f"| {run['val']['ndcg@10']:.4f} "
            f"| {run['val']['hr@10']:.4f} | {run['epochs']} | {run['train_seconds']:.0f}"
            f"{' *' if run.get('note') else ''} |\n"
        )
    if any(run.get("note") for run in result.get("selection", [])):
        selection += (
            "\n\\* shared the two cores with other work for part of the run: time not comparable.\n"
        )
    for run in result.get("selection_stopped", []):
        selection += f"\nStopped early: {' '.join(run['overrides'])}: {run['note']}.\n"
    return {
        "results": head + "\n".join(body) + "\n",
        "published": published,
        "selection": selection,
    }


def markdown(result: dict) -> str:
    t = tables(result)
    counts = result["features"]["counts"]
    machines = sorted({r["machine"] for r in result["runs"]})
    return (
        "# Amazon Beauty (S3-Rec preprocessing): test split, full ranking, seen items removed\n\n"
        f"Data after the features stage: {counts['rows']:,} interactions, {counts['users']:,} "
        f"users, {counts['items']:,} items (the k-core filter removed "
        f"{counts['kcore_rows_removed']} rows); leave-one-out: {counts['loo']['test']:,} test "
        "users. Mean ± spread (population std) over the seeds; times are wall seconds of "
        "training on the machine below.\n\n"
        + t["results"]
        + "\n"
        + t["published"]
        + "\nSelection of the defaults, validation split only (seed 42):\n\n"
        + t["selection"]
        + f"\nTargets (issue): NDCG@10 >= {TARGETS['ndcg@10']}, HR@10 >= {TARGETS['hr@10']}, "
        f"training <= {TARGETS['train_seconds']:.0f} s.\n\nMachine: {'; '.join(machines)}.\n"
    )


if __name__ == "__main__":
    main()
