"""Approximate nearest-neighbour retrieval for dot-product scorers: an HNSW index over the item
vectors (usearch), built at export and loaded by the server.

Why: a model whose score is user vector . item vector (SASRec, GRU4Rec, two-tower) costs a
full pass over the catalogue per request when scored exactly, fine at 1,682 items and not at a
million. The index returns a candidate pool of `pool` items (plus room for the items a request
excludes); the server re-scores the pool exactly and filters it (seen items, genres), and falls
back to exact scoring when too few candidates survive the filters, so an answer is never short
and never holds an excluded item. Export measures the served path's recall@10 against exact
scoring on held-out users and writes it into the manifest beside the index's settings.

Inner product (usearch's "ip" metric: distance 1 - dot) is what the models score with; keys
are the item indices 1..n (0 is padding and is not indexed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import usearch
from usearch.index import Index

if TYPE_CHECKING:  # the server imports this module: no params (nor YAML) at run time
    from tasks.params import AnnParams

INDEX_FILE = "items.usearch"


def build(vectors: np.ndarray, params: AnnParams) -> Index:
    """An HNSW inner-product index of rows 1..n of `vectors` [n+1, d] (row 0 is padding)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = Index(
        ndim=vectors.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=params.connectivity,
        expansion_add=params.expansion_add,
        expansion_search=params.expansion_search,
    )
    index.add(np.arange(1, len(vectors), dtype=np.uint64), vectors[1:], threads=params.threads)
    return index


def load(path: Path, expansion_search: int) -> Index:
    """The saved index, memory-mapped read-only (view), with the manifest's search depth."""
    index = Index.restore(str(path), view=True)
    if index is None:
        raise ValueError(f"{path}: not a usearch index")
    index.expansion_search = expansion_search
    return index


def candidates(index: Index, query: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` item indices the index ranks highest for one query vector."""
    count = max(1, min(count, len(index)))
    matches = index.search(np.ascontiguousarray(query, dtype=np.float32), count)
    return np.asarray(matches.keys, dtype=np.int64)


def top_k(
    vectors: np.ndarray, query: np.ndarray, pool: np.ndarray, k: int, allowed: Any = None
) -> np.ndarray:
    """The k best of `pool` by exact score (query . vector), ties by index; `allowed`, a mask
    over the catalogue, drops excluded items first."""
    if allowed is not None:
        pool = pool[allowed[pool]]
    scores = vectors[pool] @ query
    order = np.lexsort((pool, -scores))[:k]
    return pool[order]


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The k best items 1..n by the full dot product: the reference the recall is against."""
    scores = vectors[1:] @ query
    best = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
    return 1 + best[np.lexsort((best, -scores[best]))]


def measure_recall(
    index: Index, vectors: np.ndarray, queries: np.ndarray, params: AnnParams, k: int = 10
) -> dict[str, Any]:
    """recall@k of the served path (the pool re-scored exactly) and of the index's own top-k,
    against exact scoring, averaged over the query vectors; with the index's query latency."""
    served, raw, times = [], [], []
    for query in queries:
        start = time.perf_counter()
        pool = candidates(index, query, params.pool)
        times.append((time.perf_counter() - start) * 1000)
        exact = set(exact_top_k(vectors, query, k).tolist())
        served.append(len(exact & set(top_k(vectors, query, pool, k).tolist())) / len(exact))
        raw.append(len(exact & set(pool[:k].tolist())) / len(exact))
    return {
        f"recall@{k}": round(float(np.mean(served)), 5),
        f"index_recall@{k}": round(float(np.mean(raw)), 5),
        "queries": len(queries),
        "search_p50_ms": round(float(np.percentile(times, 50)), 4),
        "search_p99_ms": round(float(np.percentile(times, 99)), 4),
    }


def write(out: Path, vectors: np.ndarray, queries: np.ndarray, params: AnnParams) -> dict[str, Any]:
    """Build, save and measure the index; the manifest's "ann" entry."""
    start = time.perf_counter()
    index = build(vectors, params)
    seconds = time.perf_counter() - start
    index.save(str(out / INDEX_FILE))
    recall = measure_recall(index, vectors, queries, params)
    return {
        "kind": "hnsw",
        "library": f"usearch {usearch.__version__}",
        "file": INDEX_FILE,
        "metric": "ip",
        "items": int(len(vectors) - 1),
        "connectivity": params.connectivity,
        "expansion_add": params.expansion_add,
        "expansion_search": params.expansion_search,
        "pool": params.pool,
        "build_seconds": round(seconds, 3),
        **recall,
    }
