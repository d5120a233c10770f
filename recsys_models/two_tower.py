"""Two-tower retrieval: a user tower and an item tower meeting in one embedding space.

The point of the split is serving: item vectors do not depend on the user, so the whole catalogue
is embedded once (`TwoTower.item_embeddings`) and a request costs one user-tower pass plus a
dot product (or a nearest-neighbour lookup). The user tower pools the user's recent items, so a
new interaction changes the recommendations without retraining.

Training is in-batch sampled softmax: every other positive of the batch is a negative. Popular
items are over-represented as such negatives, so each logit is corrected by the log of its
item's sampling probability (logQ correction, Yi et al. 2019); without it the model learns to
push popular items down and loses exactly the items people watch.

With item text embeddings in the features (pretrained, features.text), the item tower adds a
learned projection of the frozen text vector (`text_features`). The projection is trained on
items with interactions and applies to every item with text, so a new item with text but no
interactions lands near the items its text resembles. The id embedding of an item without
training interactions, which no gradient reaches, is zero rather than random noise, text or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recsys_models.data import FeatureData, eval_loader
from recsys_models.dropout import Dropout
from recsys_models.item_table import CachedItemTable
from recsys_models.lightning_base import RankingModule
from recsys_models.negative_logsumexp import matching_pairs
from recsys_models.spec import EMBEDDINGS, GRADIENT, ModelSpec

# A finite "minus infinity": masked logits stay finite, so a row whose logits are all masked
# but its positive still gives a finite loss.
MASKED = -1e9


@dataclass(frozen=True)
class Config:
    dim: int = 64  # the shared embedding dimension
    hidden: int = 256  # width of each tower's MLP
    history_len: int = 20  # most recent items the user tower pools (<= features.max_seq_len)
    recency_decay: float = 0.8  # weight of an item k steps before the latest: decay**k (1 = mean)
    user_features: bool = True  # embed FeatureData.user_features where present
    item_features: bool = True  # genres and year bucket beside the item id
    text_features: bool = True  # a projection of the item's text embedding, where features have it
    id_dropout: float = 0.5  # with text: share of training items seen without their id embedding
    similarity: str = "cosine"  # cosine|dot
    temperature: float = 0.05  # logits = similarity / temperature
    logq_correction: bool = True
    n_uniform_negatives: int = 0  # extra negatives drawn uniformly per batch, shared by its rows
    mask_false_negatives: bool = True  # drop in-batch negatives the user is known to like
    dropout: float = 0.3
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 0.0
    eval_batch_size: int = 256

    def __post_init__(self):
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {self.similarity!r}")
        if min(self.dim, self.hidden, self.history_len, self.batch_size, self.eval_batch_size) < 1:
            raise ValueError("dim, hidden, history_len, batch_size, eval_batch_size must be >= 1")
        if not 0 <= self.id_dropout < 1:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if not 0 < self.recency_decay <= 1 or self.temperature <= 0 or self.lr <= 0:
            raise ValueError("need 0 < recency_decay <= 1, temperature > 0 and lr > 0")
        if self.n_uniform_negatives < 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ValueError("need n_uniform_negatives >= 0, weight_decay >= 0, 0 <= dropout < 1")


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), Dropout(dropout), nn.Linear(hidden, dim)
    )


class TwoTower(CachedItemTable):
    """score(users, history) = user_embeddings(users, history) @ item_embeddings().T.

    The feature tables travel as buffers, so the state dict alone (with the Config and the
    catalogue sizes of the same features) rebuilds the model.
    """

    def __init__(self, data: FeatureData, config: Config):
        super().__init__()
        self.config = config
        self.n_items = data.n_items
        d = config.dim

        self.item_id = nn.Embedding(data.n_items + 1, d, padding_idx=0)
        self.register_buffer("genres", torch.as_tensor(data.item_genres, dtype=torch.float32))
        self.register_buffer("year", torch.as_tensor(data.item_year_bucket, dtype=torch.long))
        if config.item_features:
            self.genre_proj = nn.Linear(self.genres.shape[1], d, bias=False)
            self.year_emb = nn.Embedding(int(self.year.max()) + 1, d, padding_idx=0)
        self.use_text = config.text_features and data.item_text is not None
        if self.use_text:
            text = torch.as_tensor(data.item_text, dtype=torch.float32).clone()
            text[~torch.as_tensor(data.item_text_mask, dtype=torch.bool)] = 0.0
            self.register_buffer("text", text)  # frozen: the encoder is never fine-tuned here
            self.text_proj = nn.Linear(text.shape[1], d, bias=False)
        with torch.no_grad():
            # Items never trained on: no gradient will reach their id rows, so their content
            # (text, categories) speaks, or nothing does; random noise there would rank them
            # anywhere, into every user's top 10 as easily as out of it.
            self.item_id.weight[torch.as_tensor(data.item_popularity) == 0] = 0.0
        self.item_mlp = _mlp(d, config.hidden, config.dropout)

        # Recency weights, oldest position first, as the left-padded history is laid out.
        steps = torch.arange(config.history_len - 1, -1, -1, dtype=torch.float32)
        self.register_buffer("recency", config.recency_decay**steps, persistent=False)
        self.user_feature_embs = nn.ModuleList()
        if config.user_features and data.user_features is not None:
            codes = torch.as_tensor(data.user_features, dtype=torch.long)
            self.register_buffer("user_codes", codes)
            sizes = codes.max(dim=0).values.tolist() if codes.numel() else []
            self.user_feature_embs.extend(nn.Embedding(int(n) + 1, d, padding_idx=0) for n in sizes)
        self.history_dropout = Dropout(config.dropout)
        self.user_mlp = _mlp(d, config.hidden, config.dropout)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.config.similarity == "cosine" else x

    def item_tower(self, items: torch.Tensor) -> torch.Tensor:
        """Embedding of the given item ids (any shape), normalised when cosine."""
        x = self.item_id(items)
        if self.use_text and self.training and self.config.id_dropout > 0:
            # Items trained without their id now and then make the content inputs carry the
            # embedding alone, as they must for an item no one has interacted with yet.
            kept = torch.rand(items.shape, device=x.device) >= self.config.id_dropout
            x = x * kept.unsqueeze(-1)
        if self.config.item_features:
            x = x + self.genre_proj(self.genres[items]) + self.year_emb(self.year[items])
        if self.use_text:
            x = x + self.text_proj(self.text[items])
        return self._normalise(x + self.item_mlp(x))

    def item_embeddings(self) -> torch.Tensor:
        """[I+1, D] the whole catalogue through the item tower; row 0 (padding) is zero."""
        items = torch.arange(1, self.n_items + 1, device=self.item_id.weight.device)
        out = self.item_tower(items)
        return torch.cat([out.new_zeros(1, out.shape[1]), out])

    def user_embeddings(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """[B, D] from the last history_len items (recency-weighted mean) and user features.

        An all-padding history pools to zero (no division by zero), so a cold user is scored by
        features alone.
        """
        history = history[:, -self.config.history_len :]
        weights = self.recency[-history.shape[1] :] * (history > 0).float()
        pooled = (self.item_id(history) * weights.unsqueeze(-1)).sum(dim=1)
        x = self.history_dropout(pooled / weights.sum(dim=1, keepdim=True).clamp_min(1e-6))
        if len(self.user_feature_embs):
            codes = self.user_codes[users]
            for k, emb in enumerate(self.user_feature_embs):
                x = x + emb(codes[:, k])
        return self._normalise(x + self.user_mlp(x))

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """[B, I+1]; in eval mode the catalogue is embedded once and reused until training."""
        return self.user_embeddings(users, history) @ self.item_table().T


def corrected_logits(
    scores: torch.Tensor, log_q: torch.Tensor | None, false_negatives: torch.Tensor | None
) -> torch.Tensor:
    """scores [B, C] (column j <= B-1 on the diagonal is row j's positive) minus log q_j.

    Subtracting log q makes a popular candidate's logit smaller, undoing the bias of having
    seen it as a negative often. false_negatives [B, C] marks candidates to drop; a row's own
    positive is never dropped.
    """
    logits = scores if log_q is None else scores - log_q.unsqueeze(0)
    if false_negatives is not None:
        rows = torch.arange(scores.shape[0], device=scores.device)
        keep_positive = torch.zeros_like(false_negatives)
        keep_positive[rows, rows] = True
        logits = logits.masked_fill(false_negatives & ~keep_positive, MASKED)
    return logits


def sampled_softmax_loss(
    scores: torch.Tensor, log_q: torch.Tensor | None, false_negatives: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of each row's positive (the diagonal) against the row's other candidates."""
    logits = corrected_logits(scores, log_q, false_negatives)
    targets = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(logits, targets)


def items_in_history(history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[B, C]: candidate j occurs in row i of history. Each history item is looked up among the
    sorted candidates (matching_pairs), O(B*L log C): a sort-based isin over the B*C (row, item)
    keys took about 40% of a step at MovieLens-25M's shape (bench/bench_step.py)."""
    rows, columns = matching_pairs(history.reshape(-1), candidates)
    found = torch.zeros(len(history), len(candidates), dtype=torch.bool, device=history.device)
    found[rows // history.shape[1], columns] = True
    return found


class TwoTowerModule(RankingModule):
    def __init__(self, model: TwoTower, data: FeatureData, config: Config):
        super().__init__()
        self.config = config
        self.model = model
        # Probability of an item being a training target (each training row but the user's
        # first is a target); +1 smoothing keeps never-seen items finite.
        popularity = np.asarray(data.item_popularity, dtype=np.float64) + 1.0
        popularity[0] = 1.0
        probs = torch.as_tensor(popularity / popularity[1:].sum(), dtype=torch.float32)
        self.register_buffer("item_prob", probs, persistent=False)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        users, history, target = batch["user"], batch["history"], batch["target"]
        candidates = target
        if "negatives" in batch:
            candidates = torch.cat([target, batch["negatives"]])
        user_vec = self.model.user_embeddings(users, history)
        item_vec = self.model.item_tower(candidates)
        scores = user_vec @ item_vec.T / cfg.temperature
        log_q = None
        if cfg.logq_correction:
            # Expected number of times the item is among the candidates of a batch.
            q = len(target) * self.item_prob[candidates] + cfg.n_uniform_negatives / (
                self.model.n_items
            )
            log_q = torch.log(q)
        mask = None
        if cfg.mask_false_negatives:
            same_item = target.unsqueeze(1) == candidates.unsqueeze(0)
            mask = same_item
            same_user = users.unsqueeze(1) == users.unsqueeze(0)
            mask[:, : len(target)] |= same_user
            mask |= items_in_history(history, candidates)
        return sampled_softmax_loss(scores, log_q, mask)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay, fused=True
        )


class TwoTowerData(lightning.LightningDataModule):
    """(history prefix -> next item) pairs from the training sequences.

    Every training row that is not its user's first is a target; its history is the up to
    history_len rows before it, left-padded. Windows are cut per batch by index arithmetic over
    the flat training arrays, so memory stays O(rows), not O(rows * history_len).
    """

    def __init__(self, data: FeatureData, config: Config, seed: int):
        super().__init__()
        self.data, self.config, self.seed = data, config, seed
        self.items = np.asarray(data.train_items, dtype=np.int64)
        self.users = np.asarray(data.train_users, dtype=np.int64)
        starts = data.train_offsets()[:-1]
        self.row_start = starts[self.users]  # first row of each row's user
        self.positions = np.flatnonzero(np.arange(len(self.items)) > self.row_start)
        self.rng = np.random.default_rng(seed)

    def windows(self, positions: np.ndarray) -> np.ndarray:
        """[len(positions), history_len] the items just before each position, left-padded."""
        length = self.config.history_len
        idx = positions[:, None] - length + np.arange(length)[None, :]
        valid = idx >= self.row_start[positions][:, None]
        return np.where(valid, self.items[np.maximum(idx, 0)], 0)

    def collate(self, positions: list[int]) -> dict[str, torch.Tensor]:
        pos = np.asarray(positions, dtype=np.int64)
        batch = {
            "user": torch.from_numpy(self.users[pos]),
            "history": torch.from_numpy(self.windows(pos)),
            "target": torch.from_numpy(self.items[pos]),
        }
        if self.config.n_uniform_negatives > 0:
            negatives = self.rng.integers(1, self.data.n_items + 1, self.config.n_uniform_negatives)
            batch["negatives"] = torch.from_numpy(negatives.astype(np.int64))
        return batch

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.positions.tolist(),
            batch_size=self.config.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collate,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.data, "val", self.config.eval_batch_size)


def restore(data: FeatureData, config: Config) -> TwoTower:
    """The bare TwoTower for `data`, untrained: the module that saved weights load into, and
    the one build() initialises. Its feature tables (genres, year buckets, user codes) are
    copied from `data`, which also fixes the sizes of the feature embeddings."""
    return TwoTower(data, config)


def build(data: FeatureData, config: Config, seed: int) -> tuple[TwoTowerModule, TwoTowerData]:
    """The LightningModule (its `.model` is the TwoTower) and the DataModule of `data`."""
    # The global generator, not a fork of it as in the other models: training draws its dropout
    # from the generator where the initialisation left it, and a fork would change those draws
    # and with them every two-tower result recorded so far.
    torch.manual_seed(seed)
    model = restore(data, config)
    return TwoTowerModule(model, data, config), TwoTowerData(data, config, seed)


__all__ = [
    "SPEC",
    "Config",
    "TwoTower",
    "TwoTowerData",
    "TwoTowerModule",
    "build",
    "corrected_logits",
    "restore",
    "sampled_softmax_loss",
]

SPEC = ModelSpec(
    name="two_tower",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=EMBEDDINGS,
    build=build,
)
