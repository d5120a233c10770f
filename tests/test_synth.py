"""The synthetic generator: exact sizes, reproducible by seed, Zipf-like and sequential."""

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.errors import RecsysError
from tasks.synth import synthesize


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, n_users=400, n_items=300, n_interactions=30_000, seed=7)
    return out


def test_sizes_and_schema(synth_dir: Path):
    df = pl.read_parquet(synth_dir / "interactions.parquet")
    assert df.height == 30_000
    assert df.schema == {
        "user_id": pl.String,
        "item_id": pl.String,
        "timestamp": pl.Int64,
        "rating": pl.Float64,
    }
    per_user = df.group_by("user_id").len()
    assert per_user.height == 400 and per_user["len"].min() >= 5
    assert df["rating"].is_between(1, 5).all()
    items = pl.read_parquet(synth_dir / "items.parquet")
    assert items.height == 300 and items["genres"].list.len().min() >= 1
    assert set(df["item_id"].unique()) <= set(items["item_id"])


def test_timestamps_increase_within_each_user(synth_dir: Path):
    df = pl.read_parquet(synth_dir / "interactions.parquet")
    gaps = df.group_by("user_id", maintain_order=True).agg(pl.col("timestamp").diff().min())
    assert gaps["timestamp"].min() > 0


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path, synth_dir: Path):
    synthesize(tmp_path / "a", n_users=400, n_items=300, n_interactions=30_000, seed=7)
    synthesize(tmp_path / "b", n_users=400, n_items=300, n_interactions=30_000, seed=8)
    base = pl.read_parquet(synth_dir / "interactions.parquet")
    assert pl.read_parquet(tmp_path / "a" / "interactions.parquet").equals(base)
    assert not pl.read_parquet(tmp_path / "b" / "interactions.parquet").equals(base)


def test_popularity_is_skewed(synth_dir: Path):
    counts = np.sort(
        pl.read_parquet(synth_dir / "interactions.parquet")
        .group_by("item_id")
        .len()["len"]
        .to_numpy()
    )[::-1]
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.3  # the top 10% of items take far more than 10% of interactions


def test_next_item_is_predictable_beyond_popularity(synth_dir: Path):
    """Knowing the previous item must beat popularity at predicting the next one."""
    df = pl.read_parquet(synth_dir / "interactions.parquet")
    seqs = df.group_by("user_id", maintain_order=True).agg("item_id")["item_id"].to_list()
    train_pairs = Counter((a, b) for s in seqs for a, b in zip(s[:-2], s[1:-1], strict=True))
    following: dict[str, Counter] = {}
    for (a, b), n in train_pairs.items():
        following.setdefault(a, Counter())[b] += n
    popular = [i for i, _ in Counter(i for s in seqs for i in s[:-1]).most_common(10)]
    hits_seq = hits_pop = 0
    for s in seqs:
        prev, target = s[-2], s[-1]
        guess = [i for i, _ in following.get(prev, Counter()).most_common(10)]
        hits_seq += target in guess
        hits_pop += target in popular
    assert hits_seq > 1.5 * hits_pop


def test_too_few_interactions_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RecsysError, match="below 5 per user"):
        synthesize(tmp_path, n_users=100, n_items=50, n_interactions=100)


def test_heavy_users_never_reach_the_future(tmp_path: Path):
    synthesize(tmp_path, n_users=10, n_items=100, n_interactions=50_000, seed=1)
    ts = pl.read_parquet(tmp_path / "interactions.parquet")["timestamp"]
    three_years = 3 * 365 * 86_400
    assert ts.max() < 1_600_000_000 + three_years + 86_400
