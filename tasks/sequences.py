"""Per-user sequences of user-sorted interaction rows, in plain numpy: how the features stage
writes padded histories and how the feature store builds the temporal view, the same way."""

from __future__ import annotations

import numpy as np


def rank_from_end(users: np.ndarray, n_users: int) -> np.ndarray:
    """Per row of a user-sorted array: 0 for the user's last row, 1 for the one before, ..."""
    ends = np.cumsum(np.bincount(users, minlength=n_users + 1))
    return ends[users] - 1 - np.arange(len(users))


def padded_tail(users: np.ndarray, items: np.ndarray, n_users: int, max_len: int) -> np.ndarray:
    """[n_users + 1, max_len] int32: each user's last max_len items, left-padded with 0.

    Rows must be sorted by user then time; one scatter instead of a loop over users.
    """
    from_end = rank_from_end(users, n_users)
    shown = from_end < max_len
    out = np.zeros((n_users + 1, max_len), dtype=np.int32)
    out[users[shown], max_len - 1 - from_end[shown]] = items[shown]
    return out


def csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) by user of user-sorted rows: user u's items are items[ptr[u]:ptr[u+1]]."""
    counts = np.bincount(users, minlength=n_users + 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items.astype(np.int64)
