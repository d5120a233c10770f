"""The evaluation protocol (README.md, "Evaluation"): splits, cut-offs, protocol cards and
history buckets.

Training (early stopping), evaluation and the report all read these from here, so a figure can
never be computed under one protocol and labelled with another.
"""

from __future__ import annotations

import json
from typing import Any

from recsys_models.metrics import KS
from tasks.errors import RecsysError

BEYOND_K = 10
HISTORY_BUCKETS = (0, 20, 50, 100, 200, 500)  # lower edges, for NDCG@10 by history length
PRIMARY_METRICS = tuple(
    f"{name}@{k}" for name in ("ndcg", "hr", "recall", "precision") for k in KS
) + ("mrr", "auc")
SPLITS = {
    "loo": "leave-one-out by time: each user's last interaction is the target, the one before "
    "it validation, the rest training",
    "temporal": "global temporal: trained on interactions before the validation cut; targets are "
    "every item a user consumed after the test cut, history everything before it",
}
CARD_KINDS = ("full", "sampled", "beyond")


def protocol_card(
    split: str, kind: str, version: dict[str, Any], sampled_negatives: int, seed: int
) -> dict[str, Any]:
    """Everything a number depends on besides the model; a row without it is never shown."""
    card: dict[str, Any] = {
        "id": f"{split}/{kind}",
        "split": split,
        "split_detail": SPLITS[split],
        "ks": list(KS),
        "seen_items": "removed from the candidates (a target itself always stays)",
        "ties": "count against the model",
        "data_version": version,
    }
    if kind == "full":
        card |= {
            "ranking": "full",
            "candidates": "the whole catalogue but padding and the user's seen items",
            "sampler": None,
        }
    elif kind == "sampled":
        card |= {
            "ranking": "sampled (not the primary figure; for comparison with published tables)",
            "candidates": f"each target and {sampled_negatives} sampled negatives",
            "sampler": {
                "kind": "uniform without replacement over items the user never touched",
                "n": sampled_negatives,
                "seed": seed,
                "per_user_stream": "numpy default_rng([seed, user])",
            },
        }
    else:
        card |= {
            "ranking": f"top-{BEYOND_K} lists of the full ranking (coverage at every K)",
            "candidates": "the whole catalogue but padding and the user's seen items",
            "sampler": None,
        }
    return card


def same_protocol(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one card shared by rows about to be put in one table; mixing protocols is refused."""
    cards = {json.dumps(row["card"], sort_keys=True) for row in rows}
    if len(cards) > 1:
        ids = sorted({row["card"]["id"] for row in rows})
        raise RecsysError(f"a metrics table cannot mix protocols ({', '.join(ids)})")
    return rows[0]["card"] if rows else {}
