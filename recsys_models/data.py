"""In-memory views of the features stage's output, shared by every model.

No file is read here (tasks/train.py loads the files and fills `FeatureData`); this module only
turns arrays into the batches models train and are evaluated on, so every model is scored on
exactly the same users, inputs, targets and seen-item masks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler


@dataclass
class FeatureData:
    """Arrays indexed by user_idx / item_idx (0 is padding for both).

    train_users/train_items: the leave-one-out training interactions, sorted by user and then
    time, so each user's rows are their history in order.
    """

    n_users: int
    n_items: int
    max_seq_len: int
    train_users: np.ndarray
    train_items: np.ndarray
    val_input: np.ndarray  # [U+1, L] left-padded: the items that predict the val target
    val_target: np.ndarray  # [U+1], 0 = no target
    test_input: np.ndarray  # [U+1, L]: training + validation items
    test_target: np.ndarray  # [U+1]
    item_genres: np.ndarray  # [I+1, G]
    item_year_bucket: np.ndarray  # [I+1]
    item_popularity: np.ndarray  # [I+1] training counts
    user_features: np.ndarray | None = None  # [U+1, F] categorical codes, 0 = unknown
    # Explicit rating of each training row (aligned with train_users), for rating models only;
    # None when the source has no ratings or any training row lacks one.
    train_ratings: np.ndarray | None = None
    # When each training row happened (aligned with train_users), in the source's time unit
    # (line order for `seq` sources): for models that weigh recent events, e.g. recent popularity.
    train_times: np.ndarray | None = None
    # Set by the global temporal protocol only (tasks/train.load_features): what each user did
    # before the test cut and every item they consumed after it, both CSR (indptr, items) by
    # user. Leave-one-out derives both from the arrays above: one target, seen = train + val.
    test_seen: tuple[np.ndarray, np.ndarray] | None = None
    test_target_sets: tuple[np.ndarray, np.ndarray] | None = None
    # Pretrained text embeddings of the items (features.text): [I+1, D] float32 unit rows, zero
    # where item_text_mask [I+1] is False (no text). None when the features have no text.
    item_text: np.ndarray | None = None
    item_text_mask: np.ndarray | None = None

    def train_offsets(self) -> np.ndarray:
        """indptr of the users' training histories: rows of user u are [off[u], off[u+1])."""
        counts = np.bincount(self.train_users, minlength=self.n_users + 1)
        return np.concatenate([[0], np.cumsum(counts)])

    def seen(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr, items) of what each user interacted with before the split's target."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if split == "test" and self.test_seen is not None:
            return self.test_seen
        users, items = self.train_users, self.train_items
        if split == "test":
            has_val = np.flatnonzero(self.val_target > 0)
            users = np.concatenate([users, has_val])
            items = np.concatenate([items, self.val_target[has_val]])
            order = np.argsort(users, kind="stable")
            users, items = users[order], items[order]
        counts = np.bincount(users, minlength=self.n_users + 1)
        return np.concatenate([[0], np.cumsum(counts)]), items

    def targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [U+1, L], targets [U+1]) of the split."""
        if split == "val":
            return self.val_input, self.val_target
        if split == "test":
            return self.test_input, self.test_target
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")

    def target_sets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr, items) of every target of each user: one under leave-one-out, all the
        items consumed after the cut under the global temporal protocol's test split."""
        if split == "test" and self.test_target_sets is not None:
            return self.test_target_sets
        targets = self.targets(split)[1]
        indptr = np.concatenate([[0], np.cumsum(targets > 0)])
        return indptr, targets[targets > 0].astype(np.int64)


class EvalDataset(Dataset):
    """One row per user who has a target in the split.

    trim_padding: users ordered by history length and each batch's histories cut to the
    longest one (_TrimmedRows' rule), for encoders that ignore left padding (SASRec, GRU4Rec):
    the same per-user metrics at a fraction of the encoder's cost on short histories.
    """

    def __init__(self, data: FeatureData, split: str, trim_padding: bool = False):
        inputs, targets = data.targets(split)
        self.users = np.flatnonzero(targets > 0)
        if trim_padding:
            lengths = (inputs[self.users] > 0).sum(1)
            self.users = self.users[np.argsort(lengths, kind="stable")]
        self.trim_padding = trim_padding
        self.inputs, self.targets = inputs, targets
        self.indptr, self.seen_items = data.seen(split)
        self.target_indptr, self.target_items = data.target_sets(split)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> int:
        return int(self.users[i])

    def collate(self, users: list[int]) -> dict[str, torch.Tensor]:
        u = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[u], self.indptr[u + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(u)), lengths)
        cols = np.concatenate([self.seen_items[s:e] for s, e in zip(starts, ends, strict=True)])
        history = torch.from_numpy(np.ascontiguousarray(self.inputs[u], dtype=np.int64))
        return {
            "user": torch.from_numpy(u),
            "history": trim_left_padding(history) if self.trim_padding else history,
            "target": torch.from_numpy(self.targets[u].astype(np.int64)),
            "targets": torch.from_numpy(self._target_block(u)),
            "seen_rows": torch.from_numpy(rows),
            "seen_cols": torch.from_numpy(cols.astype(np.int64)),
        }

    def _target_block(self, u: np.ndarray) -> np.ndarray:
        """[B, T] every target of each user, right-padded with 0 (T: the batch's largest set)."""
        starts, ends = self.target_indptr[u], self.target_indptr[u + 1]
        out = np.zeros((len(u), max(1, int((ends - starts).max(initial=0)))), dtype=np.int64)
        for row, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            out[row, : e - s] = self.target_items[s:e]
        return out


def hide_items(data: FeatureData, hidden: np.ndarray) -> FeatureData:
    """`data` with every training row of the items where `hidden` [I+1] is True removed and
    their popularity zero: the cold-item protocol, items no model has seen a user touch. The
    validation and test inputs are left alone (a launched item may sit in a live history)."""
    keep = ~hidden[data.train_items]

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep]

    return replace(
        data,
        train_users=data.train_users[keep],
        train_items=data.train_items[keep],
        train_times=rows(data.train_times),
        train_ratings=rows(data.train_ratings),
        item_popularity=np.where(hidden, 0, data.item_popularity).astype(np.float32),
    )


def eval_loader(
    data: FeatureData, split: str, batch_size: int = 256, trim_padding: bool = False
) -> DataLoader:
    """Batches for full-ranking evaluation: user, history, target, seen_rows/seen_cols
    (trim_padding: see EvalDataset)."""
    ds = EvalDataset(data, split, trim_padding)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=ds.collate)


class _RowBatches(Dataset):
    """Indexed by a whole batch of row numbers at once: one gather per batch, no collate."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        return self.rows[index]


class _RankBatches(BatchSampler):
    """Under data-parallel training (DDP), each process takes every world-th batch of the one
    shuffled order (all processes draw it from identically seeded generators), and all take the
    same number, so no process waits on a gradient exchange that never comes. Alone, it is a
    plain BatchSampler."""

    def __iter__(self):
        yield from this_ranks_batches(super().__iter__())

    def __len__(self) -> int:
        return super().__len__() // rank_and_world()[1]


def this_ranks_batches(batches) -> list:
    """The batches this process trains on: all of them alone, every world-th under DDP."""
    rank, world = rank_and_world()
    batches = list(batches)
    return batches[rank : len(batches) // world * world : world] if world > 1 else batches


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shuffled_batches(rows: torch.Tensor, batch_size: int, generator: torch.Generator) -> DataLoader:
    """Training batches of a precomputed tensor, reshuffled from `generator` every epoch."""
    sampler = _RankBatches(
        RandomSampler(range(len(rows)), generator=generator), batch_size, drop_last=False
    )
    return DataLoader(_RowBatches(rows), sampler=sampler, batch_size=None)


class _LengthBuckets(Sampler):
    """Batches of rows of similar length: each epoch the rows are shuffled, every run of
    `batch_size * chunk_batches` of them is sorted by length (stable) and cut into batches, and
    the batches are shuffled again. A batch is then as long as its longest row rather than the
    longest of a random sample, which on short histories is most of the cost (Amazon Beauty:
    mean window 6 items of 50; random batches of 128 reach 48, sorted ones 6). Rows stay as
    random as the chunk allows, and every row comes once per epoch."""

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        chunk_batches: int = 64,
    ):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator
        self.chunk = batch_size * chunk_batches

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches = []
        for chunk in order.split(self.chunk):
            by_length = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += by_length.split(self.batch_size)
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        yield from this_ranks_batches(batches[i].tolist() for i in shuffled)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size) // rank_and_world()[1]


class _TrimmedRows(_RowBatches):
    """Batches of left-padded rows [B, ..., L] cut to the columns where some row of the batch
    has a real item (`rows[:, 0]`, the inputs, > 0): the leading columns are padding in every
    row. Exact for encoders whose padded positions change nothing (SASRec, GRU4Rec)."""

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        batch = self.rows[index]
        return batch[..., first_real_column(batch[:, 0]) :]


def first_real_column(history: torch.Tensor) -> int:
    """The first column of left-padded histories [B, L] where some row has an item (the last
    column when none has: a batch keeps at least one)."""
    real = (history > 0).any(0)
    return int(real.int().argmax()) if bool(real.any()) else history.shape[-1] - 1


def trim_left_padding(history: torch.Tensor) -> torch.Tensor:
    """Left-padded histories [B, L] without the leading columns that are padding in every row."""
    return history[:, first_real_column(history) :]


def length_bucketed_batches(
    windows: torch.Tensor, batch_size: int, generator: torch.Generator
) -> DataLoader:
    """Training batches of left-padded windows [W, 2, L] (inputs, targets), grouped by length
    and trimmed of all-padding columns (_LengthBuckets, _TrimmedRows)."""
    lengths = (windows[:, 0] > 0).sum(1)
    sampler = _LengthBuckets(lengths, batch_size, generator)
    return DataLoader(_TrimmedRows(windows), sampler=sampler, batch_size=None)
