"""The artifact store: one exported version in memory, scored exactly as the service scores it.

The contract between export (which writes artifacts/<name>/<version>/), the service
(deploy/service.py) and the evaluation, which scores the registry's champion from the very
files the service serves rather than from a models/ folder that may since have been retrained.
No torch: the service imports it.

A ServedModel is built completely (files checked against the manifest, sessions created, one
warm-up inference run) before anything may use it, and it is never changed afterwards: the
server swaps whole ServedModels, so a request holds one consistent model from start to end.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import polars as pl

from tasks import ann
from tasks.errors import RecsysError
from tasks.io import file_sha256, staged_dir
from tasks.registry import MANIFEST, verify_version

TEXT_VECTORS = "item_text.npy"  # export's item text embeddings, rows by item_idx
NEW_ITEMS = "new_items"  # artifacts/new_items/: items encoded after export (`recsys embed-items`)


class VerificationError(RecsysError):
    """A version whose files are not the ones its manifest (or the champion pointer) recorded:
    corrupted or edited after export. Told apart from a load failure so that the server can
    count the two separately; neither is fixed by retrying."""


@dataclass(frozen=True)
class Recommendation:
    items: list[dict[str, Any]]
    fallback: bool
    reason: str | None = None


class ServedModel:
    """Everything one artifact version needs to score a request (read-only after __init__)."""

    def __init__(self, folder: str | Path, manifest_sha256: str | None = None, threads: int = 1):
        folder = Path(folder)
        try:
            manifest = verify_version(folder)
        except RecsysError as exc:
            raise VerificationError(str(exc)) from exc
        if manifest_sha256 and file_sha256(folder / MANIFEST) != manifest_sha256:
            raise VerificationError(
                f"{folder / MANIFEST}: sha256 differs from the one champion.json recorded at "
                "promotion (edited after it was promoted)"
            )
        self.folder, self.manifest = folder, manifest
        self.name, self.version = str(manifest["name"]), str(manifest["version"])
        self.kind = manifest["scorer"]
        self.uses_history = bool(manifest.get("uses_history", True))
        self.max_seq_len = int(manifest["max_seq_len"])
        self.n_items = int(manifest["n_items"])
        try:
            self._load_arrays(folder)
            self._load_graph(folder, threads)
            self._load_index(folder, threads)
            self._load_items(folder)
            # One inference now, so a graph that loads but cannot run is refused at load time,
            # not on the first request.
            probe = self.scores(np.array([1], dtype=np.int64), 0)
        except RecsysError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime/numpy/polars: one clear message
            raise RecsysError(f"{folder}: cannot load ({type(exc).__name__}: {exc})") from exc
        if probe.shape != (self.n_items + 1,) or not np.isfinite(probe[1:]).all():
            raise RecsysError(f"{folder}: the model's scores have shape {probe.shape} or NaN")

    # --- loading ---------------------------------------------------------------------------

    def _load_arrays(self, folder: Path) -> None:
        def npy(name: str) -> np.ndarray:
            return np.load(folder / name, allow_pickle=False)

        self.popularity = npy("popularity.npy").astype(np.float32)
        self.histories = npy("histories.npy").astype(np.int64)
        self.seen_indptr, self.seen_items = npy("seen_indptr.npy"), npy("seen_items.npy")
        self.static = npy("scores.npy").astype(np.float32) if self.kind == "static" else None
        self.item_vectors = None
        if (folder / "item_embeddings.npy").is_file():
            vectors = npy("item_embeddings.npy").astype(np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            self.item_vectors = vectors
            self.unit_vectors = vectors / np.maximum(norms, 1e-12)
        self.text_vectors = self.without_text = None
        if self.manifest.get("text"):  # unit rows, zero where an item has no text
            self.text_vectors = npy(self.manifest["text"]["file"]).astype(np.float32)
            self.without_text = np.flatnonzero(~self.text_vectors.any(axis=1))
        self.neighbours = self.neighbour_sims = None
        if (folder / "neighbours.npy").is_file():  # item-kNN's top-k lists
            self.neighbours = npy("neighbours.npy").astype(np.int64)
            self.neighbour_sims = npy("sims.npy").astype(np.float32)
            self.decay = float(self.manifest["graphs"]["neighbours.npy"]["decay"])

    def _load_graph(self, folder: Path, threads: int) -> None:
        self.session = None
        if self.kind == "static":
            return
        graph = "model.onnx" if self.kind == "onnx_scores" else "user_embedding.onnx"
        if self.kind == "dot" and self.item_vectors is None:
            raise RecsysError(f"{folder}: a 'dot' artifact needs item_embeddings.npy")
        if self.kind not in ("onnx_scores", "dot"):
            raise RecsysError(f"{folder}: unknown scorer {self.kind!r} in {MANIFEST}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(folder / graph), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        if "history" not in self.inputs and self.uses_history:
            raise RecsysError(f"{folder / graph}: no 'history' input")

    def _load_index(self, folder: Path, threads: int) -> None:
        """The manifest's "ann" entry: an HNSW index over item vectors and the graph that
        turns a request into the query vector (tasks/ann.py); none below the size limit."""
        self.index = self.ann = None
        entry = self.manifest.get("ann")
        if not entry:
            return
        self.ann = entry
        if entry.get("kind") == "neighbours" and self.neighbours is not None:
            return  # item-kNN: scored from its neighbour lists, no index
        if entry.get("kind") != "hnsw":
            raise RecsysError(f"{folder}: unknown ann kind {entry.get('kind')!r} in {MANIFEST}")
        self.index = ann.load(folder / entry["file"], int(entry["expansion_search"]))
        if entry["items"] == "item_embeddings.npy" and self.item_vectors is not None:
            self.ann_items = self.item_vectors  # already loaded: one copy in memory
        else:
            self.ann_items = np.load(folder / entry["items"], allow_pickle=False).astype(np.float32)
        if entry["query"].endswith(".npy"):  # a user id's stored vector
            self.user_vectors = np.load(folder / entry["query"], allow_pickle=False)
            self.query_session = None
        elif self.kind == "dot" and entry["query"] == "user_embedding.onnx":
            self.query_session, self.query_inputs = self.session, self.inputs
        else:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self.query_session = ort.InferenceSession(
                str(folder / entry["query"]), options, providers=["CPUExecutionProvider"]
            )
            self.query_inputs = [i.name for i in self.query_session.get_inputs()]

    def _load_items(self, folder: Path) -> None:
        items = pl.read_parquet(folder / "items.parquet").sort("item_idx")
        item_map = pl.read_parquet(folder / "item_map.parquet")
        users = pl.read_parquet(folder / "user_map.parquet")
        self.item_index = dict(
            zip(item_map["item_id"].cast(pl.Utf8), item_map["item_idx"].to_list(), strict=True)
        )
        self.user_index = dict(
            zip(users["user_id"].cast(pl.Utf8), users["user_idx"].to_list(), strict=True)
        )
        self.item_ids = [""] * (self.n_items + 1)
        for item_id, idx in self.item_index.items():
            self.item_ids[idx] = item_id
        self.titles = [""] * (self.n_items + 1)
        self.item_genres: list[list[str]] = [[] for _ in range(self.n_items + 1)]
        has_titles, has_genres = "title" in items.columns, "genres" in items.columns
        for row in items.iter_rows(named=True):
            idx = int(row["item_idx"])
            self.titles[idx] = (row["title"] or "") if has_titles else ""
            self.item_genres[idx] = list(row["genres"] or []) if has_genres else []
        self.genres = json.loads((folder / "genres.json").read_text())
        column = {genre: k for k, genre in enumerate(self.genres)}
        self.genre_matrix = np.zeros((self.n_items + 1, len(self.genres)), dtype=bool)
        for idx, names in enumerate(self.item_genres):
            for name in names:
                if name in column:
                    self.genre_matrix[idx, column[name]] = True

    # --- scoring ---------------------------------------------------------------------------

    def scores(self, history: np.ndarray, user_idx: int) -> np.ndarray:
        """[n_items+1] scores of one request; `history` holds item_idx, oldest first (left
        padding allowed), and is cut to the model's last max_seq_len items."""
        history = np.asarray(history, dtype=np.int64)
        if history.size == 0:
            history = np.zeros(1, dtype=np.int64)
        return self.score_rows(history[None, :], np.array([user_idx], dtype=np.int64))[0]

    def score_rows(self, histories: np.ndarray, users: np.ndarray) -> np.ndarray:
        """[B, n_items+1] scores of B requests in one call (the graphs' batch axis is dynamic):
        `histories` [B, L] left-padded item_idx, `users` [B] user_idx."""
        if self.kind == "static":
            return np.broadcast_to(self.static, (len(users), self.n_items + 1))
        histories = np.asarray(histories, dtype=np.int64)[:, -self.max_seq_len :]
        feeds = {"history": histories, "user": np.asarray(users, dtype=np.int64)}
        out = self.session.run(None, {name: feeds[name] for name in self.inputs})[0]
        return out @ self.item_vectors.T if self.kind == "dot" else out

    def _feeds(self, history: np.ndarray, user_idx: int, names: list[str]) -> dict[str, Any]:
        history = np.asarray(history, dtype=np.int64)[-self.max_seq_len :]
        if history.size == 0:
            history = np.zeros(1, dtype=np.int64)
        feeds = {"history": history[None, :], "user": np.array([user_idx], dtype=np.int64)}
        return {name: feeds[name] for name in names}

    def recommend(
        self,
        history: np.ndarray,
        user_idx: int,
        k: int,
        exclude: np.ndarray,
        include_genres: list[int],
        exclude_genres: list[int],
    ) -> list[dict[str, Any]]:
        """The k best items for a request. Where the manifest has an "ann" entry, from a
        candidate pool (the HNSW index's, re-scored exactly; item-kNN's neighbour lists, exact
        by construction), filtered; by scoring the whole catalogue otherwise, or when the
        filters leave fewer than k candidates."""
        pool = None
        if self.index is not None:
            pool = self._hnsw_pool(history, user_idx, k + len(exclude))
        elif self.ann is not None:  # item-kNN above the size limit: its neighbour lists
            pool = self._neighbour_pool(history)
        if pool is not None:
            found = self._from_pool(*pool, k, exclude, include_genres, exclude_genres)
            if found is not None:
                return found
        scores = self.scores(history, user_idx)
        return self.top_k(scores, k, exclude, include_genres, exclude_genres)

    def _from_pool(
        self,
        pool: np.ndarray,
        scores: Any,
        k: int,
        exclude: np.ndarray,
        include_genres: list[int],
        exclude_genres: list[int],
    ) -> list[dict[str, Any]] | None:
        """The pool's k best after the filters, by exact score (`scores(pool)`), or None when
        fewer than k survive (the caller then scores the whole catalogue)."""
        keep = (pool > 0) & ~np.isin(pool, np.asarray(exclude, dtype=np.int64))
        if include_genres:
            keep &= self.genre_matrix[pool][:, include_genres].any(axis=1)
        if exclude_genres:
            keep &= ~self.genre_matrix[pool][:, exclude_genres].any(axis=1)
        if keep.sum() < k:
            return None
        values = np.asarray(scores(keep), dtype=np.float64)
        pool = pool[keep]
        finite = np.isfinite(values)
        if finite.sum() < k:
            return None
        pool, values = pool[finite], values[finite]
        order = np.lexsort((pool, -values))[:k]
        return [self.describe(int(pool[i]), float(values[i])) for i in order]

    def _hnsw_pool(self, history: np.ndarray, user_idx: int, extra: int) -> tuple[np.ndarray, Any]:
        """Candidates from the index for the request's query vector, scored exactly."""
        if self.query_session is None:
            query = self.user_vectors[user_idx].astype(np.float32)
        else:
            feeds = self._feeds(history, user_idx, self.query_inputs)
            query = self.query_session.run(None, feeds)[0][0]
        pool = ann.candidates(self.index, query, int(self.ann["pool"]) + extra)
        return pool, lambda keep: self.ann_items[pool[keep]] @ query

    def _neighbour_pool(self, history: np.ndarray) -> tuple[np.ndarray, Any]:
        """item-kNN's exact scores, summed over the history's neighbour lists only: every item
        outside them scores 0, so the lists are the whole candidate pool."""
        history = np.asarray(history, dtype=np.int64)[-self.max_seq_len :]
        age = np.arange(len(history) - 1, -1, -1)
        weight = self.decay**age * (history > 0)
        columns = self.neighbours[history].ravel()
        values = (self.neighbour_sims[history] * weight[:, None]).ravel()
        positive = values > 0
        pool, where = np.unique(columns[positive], return_inverse=True)
        sums = np.bincount(where, weights=values[positive], minlength=len(pool))
        return pool, lambda keep: sums[keep]

    def user_history(self, user_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """(left-padded last max_seq_len items, every item the user has interacted with)."""
        seen = self.seen_items[self.seen_indptr[user_idx] : self.seen_indptr[user_idx + 1]]
        return self.histories[user_idx], seen

    def genre_columns(self, names: list[str] | None) -> list[int]:
        unknown = [n for n in names or [] if n not in self.genres]
        if unknown:
            raise ValueError(f"unknown genre {unknown[0]!r}; known: {', '.join(self.genres)}")
        return [self.genres.index(n) for n in names or []]

    def top_k(
        self,
        scores: np.ndarray,
        k: int,
        exclude: np.ndarray,
        include_genres: list[int],
        exclude_genres: list[int],
    ) -> list[dict[str, Any]]:
        """The k best items not in `exclude` that pass the genre filters, best first."""
        s = np.array(scores, dtype=np.float64)
        s[0] = -np.inf  # padding id
        s[np.asarray(exclude, dtype=np.int64)] = -np.inf
        if include_genres:
            s[~self.genre_matrix[:, include_genres].any(axis=1)] = -np.inf
        if exclude_genres:
            s[self.genre_matrix[:, exclude_genres].any(axis=1)] = -np.inf
        s[np.isnan(s)] = -np.inf
        k = min(k, int(np.isfinite(s).sum()))
        if k <= 0:
            return []
        best = np.argpartition(-s, k - 1)[:k]
        best = best[np.lexsort((best, -s[best]))]  # by score, ties by index: deterministic
        return [self.describe(int(i), float(s[i])) for i in best]

    def describe(self, idx: int, score: float) -> dict[str, Any]:
        return {
            "item_id": self.item_ids[idx],
            "score": round(score, 6),
            "title": self.titles[idx],
            "genres": self.item_genres[idx],
        }

    @property
    def similar_by(self) -> str | None:
        """How similar items are found, or None when the model has no notion of it."""
        if self.neighbours is not None:
            return "neighbours"  # item-kNN: its own top-k lists
        if self.item_vectors is not None:
            return "cosine"  # item embeddings
        if self.uses_history and self.kind != "static":
            return "one_item_history"  # the model's scores for a history of that item alone
        return None

    def similar(self, item_idx: int, k: int) -> list[dict[str, Any]]:
        """The k items most similar to item_idx (never the item itself), by `similar_by`."""
        method = self.similar_by
        if method == "neighbours":
            items, sims = self.neighbours[item_idx], self.neighbour_sims[item_idx]
            keep = (sims > 0) & (items != item_idx) & (items > 0)
            items, sims = items[keep], sims[keep]
            order = np.lexsort((items, -sims))[:k]
            return [self.describe(int(items[i]), float(sims[i])) for i in order]
        if method == "cosine":
            scores = self.unit_vectors @ self.unit_vectors[item_idx]
        elif method == "one_item_history":
            scores = self.scores(np.array([item_idx], dtype=np.int64), 0)
        else:
            raise LookupError(f"model {self.name} has no item similarity")
        return self.top_k(scores, k, np.array([item_idx]), [], [])

    def similar_in_text(self, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The k catalogue items whose text embeddings are nearest to `vector` (a unit row in
        the same encoder's space); items without text never appear."""
        if self.text_vectors is None:
            raise LookupError(f"model {self.name} was exported without item text embeddings")
        scores = self.text_vectors @ vector.astype(np.float32)
        return self.top_k(scores, k, self.without_text, [], [])

    @property
    def text_encoder(self) -> str | None:
        """The sha256 of the encoder weights the text embeddings came from (None: no text)."""
        return (self.manifest.get("text") or {}).get("weights_sha256")

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "family": self.manifest.get("family"),
            "scorer": self.kind,
            "items": self.n_items,
            "users": len(self.user_index),
            "item_embeddings": self.item_vectors is not None,
            "similar_by": self.similar_by,
            "item_text": self.text_vectors is not None,
            "retrieval": (self.ann or {}).get("kind", "exact"),
        }


class RemappedScorer:
    """A ServedModel scoring users and histories given in another feature version's indices,
    as the service would answer their requests: history items map through their ids (items the
    artifact does not know are dropped, as a client must drop ids the service refuses), users
    the artifact does not know get its popularity fallback where the model scores known users
    only, and items it does not know can never be recommended (score -inf)."""

    def __init__(self, model: ServedModel, item_ids: np.ndarray, user_ids: np.ndarray):
        self.model = model
        self.items = np.array([model.item_index.get(i, 0) if i else 0 for i in item_ids])
        self.users = np.array([model.user_index.get(u, 0) if u else 0 for u in user_ids])
        self.known = np.flatnonzero(self.items > 0)

    def score(self, users: np.ndarray, histories: np.ndarray) -> np.ndarray:
        """[B, len(item_ids)] scores for `users` [B] and left-padded `histories` [B, L]."""
        histories = self.items[np.asarray(histories, dtype=np.int64)]
        # Dropped items leave holes: close them, keeping the order, so padding stays on the left.
        order = np.argsort(histories != 0, axis=1, kind="stable")
        histories = np.take_along_axis(histories, order, axis=1)
        served_users = self.users[np.asarray(users, dtype=np.int64)]
        served = np.array(self.model.score_rows(histories, served_users), dtype=np.float32)
        if not self.model.uses_history:
            served[served_users == 0] = self.model.popularity
        out = np.full((len(served), len(self.items)), -np.inf, dtype=np.float32)
        out[:, self.known] = served[:, self.items[self.known]]
        return out


# --- items added after export ------------------------------------------------------------------


@dataclass(frozen=True)
class NewItems:
    """Items encoded after export (`recsys embed-items`), found by text only: their ids, titles,
    genres and unit text vectors, in the encoder space `encoder_sha256` names."""

    ids: list[str]
    titles: list[str]
    genres: list[list[str]]
    vectors: np.ndarray
    encoder_sha256: str

    def find(self, item_id: str) -> int | None:
        return self.rows.get(item_id)

    @functools.cached_property
    def rows(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.ids)}


def write_new_items(
    artifacts_dir: str | Path, items: pl.DataFrame, vectors: np.ndarray, encoder: dict[str, Any]
) -> Path:
    """Add `items` (item_id, title, genres) with their text vectors to artifacts/new_items/,
    replacing earlier rows of the same ids; the folder is replaced whole, so a reader sees the
    old set or the new one. Refused when the folder holds vectors of another encoder."""
    folder = Path(artifacts_dir) / NEW_ITEMS
    old = read_new_items(artifacts_dir)
    sha = str(encoder["weights_sha256"])
    if old is not None and old.encoder_sha256 != sha:
        raise RecsysError(
            f"{folder}: holds vectors of encoder {old.encoder_sha256[:12]}, not {sha[:12]}; "
            "remove the folder to start over"
        )
    schema = {"item_id": pl.String, "title": pl.String, "genres": pl.List(pl.String)}
    frame = items.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    rows = [vectors.astype(np.float32)]
    if old is not None:  # earlier items keep their rows unless encoded again now
        keep = [i for i, item in enumerate(old.ids) if item not in set(frame["item_id"])]
        earlier = {"item_id": old.ids, "title": old.titles, "genres": old.genres}
        earlier = pl.DataFrame(earlier, schema=schema)[keep]
        frame, rows = pl.concat([earlier, frame]), [old.vectors[keep], rows[0]]
    with staged_dir(folder, owned=MANIFEST) as tmp:
        frame.write_parquet(tmp / "items.parquet")
        np.save(tmp / "vectors.npy", np.concatenate(rows).astype(np.float32))
        manifest = {"encoder": encoder, "items": frame.height}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def read_new_items(artifacts_dir: str | Path) -> NewItems | None:
    """artifacts/new_items/ as written by write_new_items; None where there is none."""
    folder = Path(artifacts_dir) / NEW_ITEMS
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        items = pl.read_parquet(folder / "items.parquet")
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise RecsysError(f"{folder}: cannot read the new items ({exc})") from exc
    if vectors.shape[0] != items.height:
        raise RecsysError(f"{folder}: {vectors.shape[0]} vectors for {items.height} items")
    return NewItems(
        ids=items["item_id"].to_list(),
        titles=[t or "" for t in items["title"].to_list()],
        genres=[list(g or []) for g in items["genres"].to_list()],
        vectors=vectors,
        encoder_sha256=str(manifest["encoder"]["weights_sha256"]),
    )
