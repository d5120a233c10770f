"""A synthetic interaction generator with the structure real logs have.

Item popularity is Zipf-like, users drift between latent topics, and items follow each other
(each item has a few likely successors), so a sequence model has something to learn that
popularity cannot: it feeds the tests and the scale benchmarks (up to 25M interactions).
Every user's walk is advanced in lock step with numpy, so 25M rows take seconds, not a Python
loop per interaction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.errors import RecsysError
from tasks.io import staged_dir, write_parquet
from tasks.schema import INTERACTIONS_FILE, ITEMS_FILE, conform_interactions, conform_items

GENRES = [f"genre_{g:02d}" for g in range(18)]
# Words of each latent topic, so item titles carry the topic for a text encoder to read
# (topic k uses theme k, and past the list theme k beside theme k // len(THEMES) + k + 1).
THEMES = [
    "space rocket planet astronaut galaxy orbit alien starship",
    "cooking recipe kitchen chef baking dinner spices dessert",
    "football match goal stadium league striker referee trophy",
    "ocean sailing ship island pirate harbor storm voyage",
    "detective murder crime police clue suspect investigation alibi",
    "romance love wedding couple kiss heart marriage date",
    "war soldier battle army tank general trench invasion",
    "music band guitar concert song singer rock album",
    "horse ranch cowboy desert sheriff saloon frontier outlaw",
    "dragon wizard castle magic sword knight quest spell",
    "finance bank money stock market trader investment profit",
    "school student teacher exam classroom homework campus lesson",
    "medicine doctor hospital nurse surgery patient disease cure",
    "garden flowers plants roses soil seeds blossom gardening",
    "robot computer software hacker code machine network algorithm",
    "mountain climbing snow peak hiking glacier summit trail",
    "dog puppy pet leash bark kennel fetch paws",
    "vampire ghost haunted zombie horror curse graveyard scream",
    "politics election president senate campaign vote government law",
    "car racing engine driver speed track garage motor",
]
START_TIMESTAMP = 1_600_000_000  # 2020-09-13, so timestamps pass the sane-range check
MIN_PER_USER = 5


def synthesize(
    out_dir: Path,
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 42,
    p_follow: float = 0.5,
    p_switch: float = 0.1,
    zipf_exponent: float = 1.0,
) -> dict[str, Any]:
    """Write canonical interactions.parquet and items.parquet to `out_dir`."""
    if n_users < 1 or n_items < 10:
        raise RecsysError(f"synth: need at least 1 user and 10 items, got {n_users}, {n_items}")
    if n_interactions < n_users * MIN_PER_USER:
        raise RecsysError(
            f"synth: --interactions {n_interactions} is below {MIN_PER_USER} per user "
            f"({n_users * MIN_PER_USER} for {n_users} users)"
        )
    rng = np.random.default_rng(seed)
    world = _World.create(rng, n_items, zipf_exponent)
    lengths = _user_lengths(rng, n_users, n_interactions)
    users, items = _walk(rng, world, lengths, p_follow, p_switch)
    timestamps = _timestamps(rng, lengths)
    ratings = _ratings(rng, world, users, items)

    interactions = conform_interactions(
        pl.DataFrame(
            {
                "user_id": pl.Series(users + 1).cast(pl.String),
                "item_id": pl.Series(items + 1).cast(pl.String),
                "timestamp": timestamps,
                "rating": ratings,
            }
        )
    )
    with staged_dir(out_dir, owned=INTERACTIONS_FILE) as tmp:
        write_parquet(interactions, tmp / INTERACTIONS_FILE)
        write_parquet(world.items_table(), tmp / ITEMS_FILE)
    return {
        "out": str(out_dir),
        "rows": int(lengths.sum()),
        "users": n_users,
        "items": int(np.unique(items).size),
        "topics": world.n_topics,
        "seed": seed,
    }


class _World:
    """Items grouped into topics, each with a Zipf popularity and a few successor items."""

    def __init__(self, topic_of, popularity, successors, topic_genres, years, quality):
        self.topic_of = topic_of
        self.popularity = popularity
        self.successors = successors
        self.topic_genres = topic_genres
        self.years = years
        self.quality = quality
        self.n_topics = len(topic_genres)
        # One concatenated CDF, topic k's segment spanning [k, k+1), so a vector of users in
        # different topics samples with a single searchsorted.
        order = np.argsort(topic_of, kind="stable")
        self.items_by_topic = order
        cdf = np.empty(len(order))
        for k in range(self.n_topics):
            members = order[topic_of[order] == k]
            weights = popularity[members] / popularity[members].sum()
            cdf[
                np.searchsorted(topic_of[order], k) : np.searchsorted(topic_of[order], k)
                + len(members)
            ] = k + np.cumsum(weights)
        self.topic_cdf = cdf

    @classmethod
    def create(cls, rng: np.random.Generator, n_items: int, exponent: float) -> _World:
        n_topics = int(np.clip(round(np.sqrt(n_items) / 2), 2, 200))
        topic_of = rng.integers(0, n_topics, n_items)
        topic_of[:n_topics] = np.arange(n_topics)  # every topic has at least one item
        rank = rng.permutation(n_items)
        popularity = 1.0 / (rank + 1.0) ** exponent
        successors = np.empty((n_items, 3), dtype=np.int64)
        for k in range(n_topics):
            members = np.flatnonzero(topic_of == k)
            # successors are other items of the topic (an item never follows itself)
            picks = rng.integers(0, max(len(members) - 1, 1), size=(len(members), 3))
            picks += picks >= np.arange(len(members))[:, None]
            successors[members] = members[np.minimum(picks, len(members) - 1)]
        topic_genres = [
            sorted(rng.choice(len(GENRES), size=rng.integers(1, 4), replace=False).tolist())
            for _ in range(n_topics)
        ]
        years = (
            1950 + rng.integers(0, 70, n_topics)[topic_of] + rng.integers(0, 5, n_items)
        ).astype(np.int32)
        quality = rng.normal(0.0, 0.7, n_items)
        return cls(topic_of, popularity, successors, topic_genres, years, quality)

    def sample_in_topics(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        draws = topics + rng.random(len(topics)) * (1 - 1e-12)
        pos = np.searchsorted(self.topic_cdf, draws, side="right")
        return self.items_by_topic[np.minimum(pos, len(self.topic_cdf) - 1)]

    def title(self, item: int) -> str:
        """Item `item`'s title: its number and three words of its topic (no randomness, so the
        interactions drawn do not depend on it)."""
        k = int(self.topic_of[item])
        words = THEMES[k % len(THEMES)].split()
        if k >= len(THEMES):
            words += THEMES[(k // len(THEMES) + k + 1) % len(THEMES)].split()
        picked = [words[(item * 3 + j) % len(words)] for j in range(3)]
        return f"Synthetic item {item + 1}: {' '.join(picked)}"

    def items_table(self) -> pl.DataFrame:
        n = len(self.topic_of)
        genres = [[GENRES[g] for g in self.topic_genres[k]] for k in self.topic_of.tolist()]
        return conform_items(
            pl.DataFrame(
                {
                    "item_id": pl.Series(np.arange(1, n + 1)).cast(pl.String),
                    "title": [self.title(i) for i in range(n)],
                    "genres": genres,
                    "year": self.years,
                }
            )
        )


def _user_lengths(rng: np.random.Generator, n_users: int, total: int) -> np.ndarray:
    """Heavy-tailed history lengths (log-normal), at least MIN_PER_USER, summing to `total`."""
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    extra = total - MIN_PER_USER * n_users
    lengths = MIN_PER_USER + np.floor(raw / raw.sum() * extra).astype(np.int64)
    short = total - lengths.sum()
    lengths[rng.choice(n_users, size=int(short), replace=True)] += 1 if short else 0
    # choice with replacement may hit a user twice; fix the remainder deterministically
    lengths[0] += total - lengths.sum()
    return lengths


def _walk(rng, world: _World, lengths: np.ndarray, p_follow: float, p_switch: float):
    """Advance every user's walk one step at a time; returns (user, item) in user order."""
    n_users = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    users = np.repeat(np.arange(n_users), lengths)
    items = np.empty(offsets[-1], dtype=np.int64)
    # each user prefers three topics; the walk moves between them
    preferred = rng.integers(0, world.n_topics, size=(n_users, 3))
    topic = preferred[:, 0].copy()
    prev = world.sample_in_topics(rng, topic)
    order = np.argsort(-lengths, kind="stable")  # users by length, longest first
    sorted_lengths = lengths[order]
    for step in range(int(lengths.max())):
        active = order[: np.searchsorted(-sorted_lengths, -step, side="left")]
        active = active[lengths[active] > step]
        n = len(active)
        switch = rng.random(n) < p_switch
        topic[active[switch]] = preferred[active[switch], rng.integers(0, 3, int(switch.sum()))]
        fresh = world.sample_in_topics(rng, topic[active])
        follow = (rng.random(n) < p_follow) & (step > 0)
        succ = world.successors[prev[active], rng.integers(0, 3, n)]
        chosen = np.where(follow, succ, fresh)
        items[offsets[active] + step] = chosen
        prev[active] = chosen
        topic[active] = world.topic_of[chosen]
    return users, items


def _timestamps(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Each user starts somewhere in a year and acts every few hours (exponential gaps).

    Heavy users act more often, so every history ends within about three years of the start
    and no timestamp lands in the future, whatever the size.
    """
    n_users = len(lengths)
    start = START_TIMESTAMP + rng.integers(0, 365 * 86_400, n_users)
    mean_gap = np.minimum(4 * 3600.0, 2 * 365 * 86_400 / lengths)
    gaps = (rng.exponential(1.0, lengths.sum()) * np.repeat(mean_gap, lengths)).astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    csum = np.cumsum(gaps)
    base = np.repeat(csum[offsets[:-1]] - gaps[offsets[:-1]], lengths)
    return np.repeat(start, lengths) + csum - base


def _ratings(rng, world: _World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    user_bias = rng.normal(0.0, 0.5, users.max() + 1)
    raw = 3.5 + world.quality[items] + user_bias[users] + rng.normal(0.0, 0.6, len(items))
    return np.clip(np.rint(raw), 1, 5).astype(np.float64)
