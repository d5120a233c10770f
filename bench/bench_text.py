"""Text-embedding benchmark: how fast the pretrained encoder (all-MiniLM-L6-v2, plain torch on
CPU) embeds item texts, what the sha256-keyed cache saves on a re-run, and cold-item ranking
with and without text on the synthetic set whose titles carry the latent topics.

Item texts are MovieLens-100K's titles (data/interim/items.parquet, after `make data`) or, when
absent, the synthetic titles. Three runs over one cache folder: cold (every text encoded), warm
(nothing changed: nothing encoded), and one with 5% of the texts edited (only those encoded).
The cold-item table hides one item in eight from training entirely and ranks each cold test
target among all items (HR@10, NDCG@10 and the mean rank percentile, ties counted against the
target; random is 0.5), on the synthetic topic set and on MovieLens-100K's features
(data/features, built with text: `make data` and the text extra).
Writes bench/results/text.json and bench/results/text.md.

    python bench/bench_text.py
    python bench/bench_text.py --items data/interim/items.parquet --batch-size 64
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
from bench.common import machine, torch_info, write_results  # noqa: E402
from tasks import text_encoder  # noqa: E402
from tasks.params import FeaturesParams, TextParams  # noqa: E402
from tasks.text_features import embed_texts  # noqa: E402


def texts_of(path: Path, work: Path) -> tuple[list[str], str]:
    if path.is_file():
        titles = pl.read_parquet(path)["title"].drop_nulls().to_list()
        name = path.relative_to(ROOT) if ROOT in path.parents else path
        return [t for t in titles if t.strip()], f"MovieLens titles ({name})"
    from tasks.synth import synthesize

    synthesize(work / "synth_titles", n_users=400, n_items=1600, n_interactions=8000, seed=0)
    return pl.read_parquet(work / "synth_titles" / "items.parquet")["title"].to_list(), "synthetic"


def cache_runs(texts: list[str], cache: Path, batch_size: int) -> list[dict]:
    params = TextParams(enabled="true", cache=str(cache), batch_size=batch_size)
    start = time.perf_counter()
    encoder = text_encoder.load_encoder()
    load_s = time.perf_counter() - start
    edited = list(texts)
    for i in range(0, len(edited), 20):  # 5% of the texts changed
        edited[i] = edited[i] + " (remastered)"
    rows = []
    runs = (("cold cache", texts), ("warm cache, unchanged", texts), ("5% edited", edited))
    for run, batch in runs:
        start = time.perf_counter()
        _, _, counts = embed_texts(batch, params, encoder)
        wall = time.perf_counter() - start
        rows.append(
            {
                "run": run,
                "texts": len(batch),
                "encoded": counts["encoded"],
                "from_cache": counts["cached"],
                "seconds": round(wall, 2),
                "encoded_per_s": round(counts["encoded"] / wall, 1) if counts["encoded"] else None,
            }
        )
    return [{"run": "load encoder (hash check + weights)", "seconds": round(load_s, 2)}] + rows


def cold_table(work: Path, epochs: int, movielens: Path | None) -> list[dict]:
    """Cold-item ranking, each model with and without text: on the synthetic topic set (genres
    and years blanked: only text can place a cold item) and, given its features with text, on
    MovieLens-100K (genres and years kept, as a new film would have them: what titles add)."""
    from tasks.feature_store import load_features
    from tasks.features import build_features
    from tasks.synth import synthesize

    synthesize(work / "interim", n_users=1000, n_items=800, n_interactions=40_000, seed=3)
    text = TextParams(enabled="true", cache=str(work / "cold_cache"))
    build_features(work / "interim", work / "features", FeaturesParams(text=text), 0, None)
    sets = [("synthetic topics", load_features(work / "features"), True)]
    if movielens is not None:
        data = load_features(movielens)
        if data.item_text is None:
            raise SystemExit(f"{movielens}: no text embeddings (features.text with the extra)")
        sets.append(("MovieLens-100K titles", data, False))
    rows = []
    for name, data, blank in sets:
        rows += [row | {"data": name} for row in cold_rows(data, epochs, blank)]
    return rows


def cold_rows(data, epochs: int, blank: bool) -> list[dict]:
    """Hide one item in eight from training entirely; rank each cold test target."""
    import lightning

    from recsys_models import content_based, two_tower
    from recsys_models.data import hide_items

    hidden = np.zeros(data.n_items + 1, dtype=bool)
    hidden[np.random.default_rng(0).permutation(np.arange(1, data.n_items + 1))[::8]] = True
    data = hide_items(data, hidden)
    if blank:
        data = dataclasses.replace(
            data,
            item_genres=np.zeros_like(data.item_genres),
            item_year_bucket=np.zeros_like(data.item_year_bucket),
        )
    users = np.flatnonzero(hidden[data.test_target])
    users = users[users > 0]
    rows = []
    for use_text in (True, False):
        plain = data if use_text else dataclasses.replace(data, item_text=None)
        rows.append(
            measure(
                "content_based",
                use_text,
                content_based.fit(plain, content_based.Config(), 0),
                data,
                users,
            )
        )
        config = two_tower.Config(
            dim=32, hidden=64, history_len=8, batch_size=256, dropout=0.0, text_features=use_text
        )
        module, datamodule = two_tower.build(data, config, seed=0)
        lightning.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        ).fit(module, datamodule=datamodule)
        rows.append(measure("two_tower", use_text, module.model.eval(), data, users))
    return rows


def measure(model: str, use_text: bool, net, data, users: np.ndarray) -> dict:
    """HR@10, NDCG@10 and mean rank percentile of the cold targets (ties count against)."""
    import torch

    with torch.no_grad():
        history = torch.as_tensor(data.test_input[users]).long()
        scores = net.score(torch.as_tensor(users), history).float()[:, 1:]
    target = torch.as_tensor(data.test_target[users]).long() - 1
    rank = (scores >= scores.gather(1, target[:, None])).sum(1).numpy()
    hit = rank <= 10
    return {
        "model": model,
        "text": "yes" if use_text else "no",
        "users": int(len(users)),
        "hr@10": float(hit.mean()),
        "ndcg@10": float(np.where(hit, 1 / np.log2(rank + 1), 0).mean()),
        "percentile": float((rank / data.n_items).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=Path, default=ROOT / "data/interim/items.parquet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8, help="two-tower epochs (cold table)")
    parser.add_argument(
        "--features",
        type=Path,
        default=ROOT / "data/features",
        help="MovieLens-100K features with text embeddings, for its cold table (skipped when "
        "absent)",
    )
    args = parser.parse_args()
    reason = text_encoder.missing()
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts, source = texts_of(args.items, work)
        runs = cache_runs(texts, work / "cache", args.batch_size)
        movielens = args.features if (args.features / "manifest.json").is_file() else None
        cold = cold_table(work, args.epochs, movielens)
    result = {
        "machine": machine(),
        "torch": torch_info(),
        "encoder": f"{text_encoder.NAME} ({text_encoder.REQUIREMENT})",
        "texts": source,
        "batch_size": args.batch_size,
        "runs": runs,
        "cold_items": cold,
    }
    write_results(RESULTS, "text", result, markdown(result))
    print(markdown(result))


def tables(r: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/text.json by id: the .md and the README's generated
    blocks (bench/tables.py) come from this one function."""
    cache = [
        f"{r['machine']}; {r['torch']}; {r['encoder']}; texts: {r['texts']}; "
        f"batch {r['batch_size']}",
        "",
        "| run | texts | encoded | from cache | seconds | encoded/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["runs"]:
        cache.append(
            f"| {row['run']} | {row.get('texts', '')} | {row.get('encoded', '')} | "
            f"{row.get('from_cache', '')} | {row['seconds']} | {row.get('encoded_per_s') or ''} |"
        )
    cold = [
        "| data | model | text | cold targets | HR@10 | NDCG@10 | mean rank percentile |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in r["cold_items"]:
        cold.append(
            f"| {row.get('data', 'synthetic topics')} | {row['model']} | {row['text']} | "
            f"{row['users']} | {row['hr@10']:.3f} | "
            f"{row['ndcg@10']:.3f} | {row['percentile']:.3f} |"
        )
    return {"cache": "\n".join(cache) + "\n", "cold": "\n".join(cold) + "\n"}


def markdown(r: dict) -> str:
    t = tables(r)
    return (
        "# Text embeddings: encoder throughput, cache, cold items\n\n"
        + t["cache"]
        + "\nCold items (one item in eight hidden from training; synthetic topics with genres "
        "and years blanked so only text can place them; MovieLens-100K with its genres and "
        "years, so text is what titles add):\n\n" + t["cold"]
    )


if __name__ == "__main__":
    main()
