"""Content-based: items are described by their genres and release decade, a user by the items
they recently touched, and an item scores by the cosine between the two.

The one model that needs no co-occurrence at all, so it is the fallback for items nobody has
touched yet; on MovieLens, where genres explain little of what people watch next, it is expected
to be weak, and the benchmark says how weak.

The user profile is built from `history` (newest item weight 1, the one before `decay`, ...), not
from per-user state, for the same reason as item-kNN: the next item follows the last few, and a
user unknown at training time is scored like anyone else. Many items share the same genres and
decade, so their cosines tie exactly and ties count against the model (recsys_models.metrics);
`tie_break` adds that much of the item's normalised training popularity, which reorders only
items whose cosines are within it.

With item text embeddings in the features (features.text), a second profile is built the same
way from the history's text vectors, and an item also scores `text_weight` times the cosine
between it and the item's text: an item nobody has touched is then placed by what its text
says, not only by its genres. Items without text add nothing to either side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.spec import CLOSED_FORM, ITEM_FEATURES, SCORE_GRAPH, ModelSpec


@dataclass(frozen=True)
class Config:
    decay: float = 0.8  # weight of an item per step back from the newest; 1.0: plain mean
    year_weight: float = 0.5  # the decade one-hot's weight beside the genre multi-hot
    tie_break: float = 1e-3  # times popularity / max popularity, added to every score
    text_weight: float = 1.0  # the text cosine's weight beside the categorical one (0: unused)

    def __post_init__(self):
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.year_weight < 0 or self.tie_break < 0 or self.text_weight < 0:
            raise ValueError("year_weight, tie_break and text_weight must be >= 0")


def item_profiles(genres: torch.Tensor, year_bucket: torch.Tensor, year_weight: float):
    """[I+1, G + Y] rows of unit length (all zero for padding and items with no metadata)."""
    buckets = int(year_bucket.max()) + 1 if len(year_bucket) else 1
    years = torch.nn.functional.one_hot(year_bucket.long(), buckets).float()
    years[:, 0] = 0.0  # bucket 0 is "unknown year", which says nothing about the item
    profiles = torch.cat([genres.float(), year_weight * years], dim=1)
    profiles[0] = 0.0
    return profiles / profiles.norm(dim=1, keepdim=True).clamp_min(1e-12)


class ContentBased(nn.Module):
    def __init__(
        self,
        profiles: torch.Tensor,
        prior: torch.Tensor,
        decay: float,
        text: torch.Tensor | None = None,
        text_weight: float = 0.0,
    ):
        super().__init__()
        self.register_buffer("profiles", profiles)  # [I+1, D] unit rows
        self.register_buffer("prior", prior)  # [I+1] tie_break * popularity / max
        self.decay = decay
        self.text_weight = text_weight if text is not None else 0.0
        if self.text_weight > 0:
            self.register_buffer("text", text)  # [I+1, T] unit rows, zero without text

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Cosine between each item and the recency-weighted history profile, [B, I+1]."""
        length = history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=history.device, dtype=self.profiles.dtype)
        weight = (self.decay**age * (history > 0)).unsqueeze(-1)  # [B, L, 1]; padding: 0
        scores = _profile(weight, self.profiles[history]) @ self.profiles.T + self.prior
        if self.text_weight > 0:
            user_text = _profile(weight, self.text[history])
            scores = scores + self.text_weight * (user_text @ self.text.T)
        return scores


def _profile(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The weighted sum of a history's rows, [B, D], scaled to unit length (zero stays zero)."""
    user = (weight * rows).sum(1)
    return user / user.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _profiles(data: FeatureData, config: Config) -> torch.Tensor:
    """item_profiles of `data`'s item features: fit and restore compute them alike."""
    return item_profiles(
        torch.as_tensor(data.item_genres),
        torch.as_tensor(data.item_year_bucket),
        config.year_weight,
    )


def fit(data: FeatureData, config: Config, seed: int) -> ContentBased:
    """Profiles from the item features; `seed` is unused (nothing is random or learned)."""
    popularity = torch.as_tensor(data.item_popularity, dtype=torch.float32).clone()
    popularity[0] = 0.0
    prior = config.tie_break * popularity / popularity.max().clamp_min(1.0)
    return ContentBased(_profiles(data, config), prior, config.decay, *_text(data, config))


def _text(data: FeatureData, config: Config) -> tuple[torch.Tensor | None, float]:
    """The item text embeddings (zero rows where an item has none) and their weight."""
    if data.item_text is None:
        return None, 0.0
    text = torch.as_tensor(data.item_text, dtype=torch.float32).clone()
    text[~torch.as_tensor(data.item_text_mask, dtype=torch.bool)] = 0.0
    return text, config.text_weight


def restore(data: FeatureData, config: Config) -> ContentBased:
    """The model for saved weights to fill. The profiles are computed here because that is the
    simplest way to get their width (genres + year buckets), and they are a cheap, deterministic
    function of the item features, not a fit; the prior (training popularity) starts at zero."""
    prior = torch.zeros(data.n_items + 1)
    return ContentBased(_profiles(data, config), prior, config.decay, *_text(data, config))


SPEC = ModelSpec(
    name="content_based",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    fit=fit,
    needs=frozenset({ITEM_FEATURES}),
    requires=frozenset({ITEM_FEATURES}),  # without metadata its scores are popularity's
)
