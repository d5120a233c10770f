"""The k-core filter, shared by the features stage (which applies it) and the validate stage
(which reports beforehand what it will drop): one definition, so the warning and the filter
always agree."""

from __future__ import annotations

from typing import Any

import numpy as np


def kcore_mask(
    users: np.ndarray, items: np.ndarray, min_user: int, min_item: int
) -> tuple[np.ndarray, int]:
    """Rows kept by the k-core filter, and how many rounds it took to reach the fixed point.

    One round is not enough: dropping a rare item can push a user below the threshold.
    """
    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    if len(users) == 0:
        return keep, rounds
    while True:
        rounds += 1
        user_counts = np.bincount(users[keep], minlength=int(users.max()) + 1)
        item_counts = np.bincount(items[keep], minlength=int(items.max()) + 1)
        new = keep & (user_counts[users] >= min_user) & (item_counts[items] >= min_item)
        if new.sum() == keep.sum():
            return keep, rounds
        keep = new


def kcore_losses(users: np.ndarray, items: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    """What a k-core mask drops, in rows, users and items, and as shares of each.

    `items_share` is the share of the catalogue (the distinct items of the log) that goes:
    the figure that says whether a model will still be able to recommend most of it.
    """
    figures: dict[str, Any] = {}
    for name, codes in (("rows", None), ("users", users), ("items", items)):
        if codes is None:
            total, kept = len(keep), int(keep.sum())
        else:
            total, kept = len(np.unique(codes)), len(np.unique(codes[keep]))
        figures[f"{name}_removed"] = total - kept
        figures[f"{name}_share"] = round((total - kept) / total, 6) if total else 0.0
    return figures
