"""Training shared by the sequence encoders (SASRec, GRU4Rec): next-item windows and the losses.

Both models map a left-padded history to a hidden state per position (forward(history) ->
[B, L, H]) and score items against their own item_embeddings() table, so one windows DataModule
and one LightningModule train either; the two then differ only in the encoder, which is the
comparison the benchmark is meant to make.

Losses: the full softmax over the catalogue ("ce") costs positions x items per step, so on a
large catalogue it is nearly the whole epoch; "sampled" (softmax over the target and N shared
negatives, logQ-corrected) and "gbce" (gSASRec's calibrated BCE over k negatives) cost positions
x N instead, whatever the catalogue size. "auto" picks the full softmax up to
`full_softmax_max_items` items and the sampled softmax above. Negatives are drawn from a
torch.Generator seeded by the training seed, so a run is reproducible without touching the
global RNG, and a negative equal to a position's own target never counts as a negative.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recsys_models.data import FeatureData, eval_loader, length_bucketed_batches
from recsys_models.lightning_base import RankingModule
from recsys_models.negative_logsumexp import matching_pairs, negative_logsumexp

LOSSES = ("ce", "bce", "sampled", "gbce", "auto")
SAMPLERS = ("uniform", "in_batch", "mixed")


def check_loss_fields(config) -> None:
    """The loss fields of a sequence model's Config (loss, negatives, negative_sampler, gbce_t,
    full_softmax_max_items); a ValueError names the field, so params.yaml errors are one line."""
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
    if config.negative_sampler not in SAMPLERS:
        raise ValueError(
            f"negative_sampler must be one of {SAMPLERS}, got {config.negative_sampler!r}"
        )
    if config.negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {config.negatives}")
    if not 0 <= config.gbce_t <= 1:
        raise ValueError(f"gbce_t must be in [0, 1], got {config.gbce_t}")
    limit = config.full_softmax_max_items
    if limit < 0:
        raise ValueError(f"full_softmax_max_items must be >= 0, got {limit}")


def resolve_loss(loss: str, n_items: int, full_softmax_max_items: int) -> str:
    """The loss actually trained: "auto" is the full softmax while the catalogue is small enough
    that its cost does not dominate the epoch, the sampled softmax beyond."""
    if loss != "auto":
        return loss
    return "ce" if n_items <= full_softmax_max_items else "sampled"


def sample_other_items(
    targets: torch.Tensor, n_items: int, generator: torch.Generator
) -> torch.Tensor:
    """One item per target, uniform over the catalogue's other items (never the target itself).

    Drawn from n_items - 1 values and shifted past the target, so no rejection loop is needed.
    targets: [N] in 1..n_items, on any device; the draw happens on the generator's device (CPU).
    """
    if n_items < 2:
        raise ValueError(f"a sampled negative needs at least 2 items, the catalogue has {n_items}")
    draw = torch.randint(1, n_items, targets.shape, generator=generator).to(targets.device)
    return draw + (draw >= targets).long()


def sample_candidates(
    targets: torch.Tensor, n_items: int, n: int, sampler: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """N negative candidates shared by every position of the batch, and log of each one's
    expected count in the draw (the logQ term).

    uniform: items drawn uniformly from the catalogue; in_batch: the targets of random positions
    of the batch, so items come as often as they are targets (popularity-proportional, with no
    catalogue-wide table); mixed: half of each. The expected count of item j is
    n_uniform / n_items + n_batch * (j's count among the targets) / (targets), exact for this
    draw, so the logQ correction removes the sampler's popularity bias. Candidates may equal some
    position's target: negative_mask says where they do not.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"negative_sampler must be one of {SAMPLERS}, got {sampler!r}")
    n_batch = {"uniform": 0, "in_batch": n, "mixed": n // 2}[sampler]
    n_uniform = n - n_batch
    on_cpu = targets.detach().cpu()
    uniform = torch.randint(1, n_items + 1, (n_uniform,), generator=generator)
    picks = torch.randint(0, len(on_cpu), (n_batch,), generator=generator)
    candidates = torch.cat([uniform, on_cpu[picks]])
    counts = torch.bincount(on_cpu, minlength=n_items + 1).double()
    expected = n_uniform / n_items + n_batch * counts / len(on_cpu)  # [I + 1]
    return candidates.to(targets.device), expected.log().float().to(targets.device)


def negative_mask(targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[P, N] True where candidate j may serve as a negative of position i (it is not i's
    target): a candidate equal to the target would push the target's own score down."""
    return candidates.unsqueeze(0) != targets.unsqueeze(1)


def sampled_softmax(
    hidden: torch.Tensor,
    target_vectors: torch.Tensor,
    candidate_vectors: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    log_expected: torch.Tensor,
) -> torch.Tensor:
    """Softmax cross-entropy of each target against the shared candidates, logQ-corrected.

    hidden [P, H], the item vectors of targets [P, H] and of candidates [N, H], targets [P],
    candidates [N], log_expected [I + 1]. Every logit, the target's included (as TensorFlow's
    sampled_softmax_loss does), has log of its item's expected count subtracted; for a uniform
    draw that is one constant and cancels. Candidates equal to the row's target are left out, so
    the target only competes with others. Only these rows' vectors are needed, not the
    catalogue's, and the [P, N] logits are never held whole (negative_logsumexp.py says why).
    """
    pos = (hidden * target_vectors).sum(-1) - log_expected[targets]  # [P]
    excluded = matching_pairs(targets, candidates)
    neg = negative_logsumexp(hidden, candidate_vectors, -log_expected[candidates], excluded)
    # -log softmax of the target's logit among [target, candidates...]
    return (torch.logaddexp(pos, neg) - pos).mean()


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's calibration (Petrov & Macdonald, 2023): beta = alpha (t (1 - 1/alpha) + 1/alpha)
    with alpha = k / (|I| - 1) the negative sampling rate. t = 1 makes the model's sigmoid the
    calibrated probability of the full-catalogue BCE; t = 0 is plain BCE. Negatives are drawn
    with replacement, so on a catalogue smaller than k each item comes alpha > 1 times on
    average and beta > 1 weighs the positive up to match, as the formula gives."""
    alpha = n_negatives / max(n_items - 1, 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def gbce(
    hidden: torch.Tensor,
    target_vectors: torch.Tensor,
    candidate_vectors: torch.Tensor,
    targets: torch.Tensor,
    candidates: torch.Tensor,
    beta: float,
    offset: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """-(beta log sigmoid(s+) + sum over negatives of log(1 - sigmoid(s-))) / (1 + k) per
    position, averaged: BCE in which the positive's probability is raised to the power beta.
    Arguments as sampled_softmax's. Candidates equal to the row's target are not negatives of
    that row (they add nothing). `offset` is added to every logit (see gbce_offset): one
    constant, so no ranking changes."""
    pos = (hidden * target_vectors).sum(-1) + offset
    neg = hidden @ candidate_vectors.T + offset
    neg_terms = F.logsigmoid(-neg) * negative_mask(targets, candidates)
    per_row = beta * F.logsigmoid(pos) + neg_terms.sum(-1)
    return -(per_row / (1 + len(candidates))).mean()


def gbce_offset(n_negatives: int, beta: float) -> float:
    """The constant logit that minimises gBCE when every item scores the same: sigmoid(b) =
    beta / (beta + k), so b = log(beta / k).

    Without it, a model whose scores are dot products (no item bias) first spends epochs
    shifting every score down towards that level, and ranks nothing meanwhile: SASRec with 256
    negatives on the synthetic data fell from validation NDCG@10 0.07 to 0.03 over 5 epochs as
    its mean score fell by 0.65 per epoch. Starting a learned offset there skips that phase.
    """
    return math.log(beta / n_negatives)


def training_windows(
    users: np.ndarray, items: np.ndarray, n_users: int, max_len: int, min_context: int = 0
) -> np.ndarray:
    """[W, 2, max_len] int64 (inputs, targets) windows of the users' training sequences.

    Rows must be sorted by user then time. Every transition (item t -> item t+1) is a target in
    exactly one window; elsewhere the target is 0 (no loss there). Windows are cut from the end
    of each user's sequence backwards, so the most recent one is always there, and they overlap
    so that each target reads at least `min_context` earlier items, or its whole history when
    that is shorter: without the overlap a target at the start of a window sees almost nothing
    of a long history, which is where SASRec's accuracy is lost. min_context=0 gives disjoint
    windows (the cheapest epoch; max_len / (max_len - min_context) times more windows else).
    The earliest window starts at the user's first item; users with one item give no window.
    """
    if not 0 <= min_context < max_len:
        raise ValueError(f"min_context must be in [0, max_len={max_len}), got {min_context}")
    stride = max_len - min_context
    counts = np.bincount(users, minlength=n_users + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    transitions = np.maximum(counts - 1, 0)
    # Full windows (their inputs hold max_len real items) count their last `stride` targets;
    # one more window, anchored at the first item, counts whatever earlier targets remain.
    full = np.where(transitions > max_len, -(-(transitions - max_len) // stride), 0)
    per_user = np.where(transitions > 0, full + 1, 0)
    owner = np.repeat(np.arange(n_users + 1), per_user)
    step = np.arange(len(owner)) - (np.cumsum(per_user) - per_user)[owner]
    first, last = starts[owner], starts[owner] + transitions[owner]  # item indices
    anchored = step == full[owner]
    end = np.where(anchored, first + np.minimum(transitions[owner], max_len), last - step * stride)
    low = np.where(anchored, first, end - stride)  # targets counted: index in (low, high]
    high = np.where(anchored, last - full[owner] * stride, end)
    index = end[:, None] + np.arange(-max_len, 1)  # [W, max_len + 1] item indices
    items = np.asarray(items, dtype=np.int64)
    window = np.where(index >= first[:, None], items[np.maximum(index, 0)], 0)
    target_index = index[:, 1:]
    counted = (target_index > low[:, None]) & (target_index <= high[:, None])
    return np.stack([window[:, :-1], np.where(counted, window[:, 1:], 0)], axis=1)


class WindowData(L.LightningDataModule):
    """training_windows of the features, reshuffled every epoch into batches of similar length
    cut to their longest window (recsys_models.data.length_bucketed_batches: both encoders
    ignore left padding, so this changes the cost, not the model), and the validation batches.

    config needs min_context, batch_size and eval_batch_size (SASRec's and GRU4Rec's have them).
    """

    def __init__(self, data: FeatureData, config, seed: int):
        super().__init__()
        self.data, self.config, self.seed = data, config, seed
        windows = training_windows(
            data.train_users,
            data.train_items,
            data.n_users,
            data.max_seq_len,
            config.min_context,
        )
        self.windows = torch.from_numpy(windows)
        self.generator = torch.Generator().manual_seed(seed)
        # Targets a batch holds on average (NextItemModule weighs each batch's mean loss by
        # its own count over this one).
        targets = int((self.windows[:, 1] > 0).sum())
        self.targets_per_batch = targets / max(-(-len(windows) // config.batch_size), 1)

    def train_dataloader(self) -> DataLoader:
        return length_bucketed_batches(self.windows, self.config.batch_size, self.generator)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.data, "val", self.config.eval_batch_size, trim_padding=True)


def next_item_training(
    model: nn.Module, data: FeatureData, config, seed: int
) -> tuple[NextItemModule, WindowData]:
    """The LightningModule (its `.model` is `model`) and the windows DataModule of `data`."""
    windows = WindowData(data, config, seed)
    module = NextItemModule(model, data.n_items, config, seed, windows.targets_per_batch)
    return module, windows


class NextItemModule(RankingModule):
    """Every position of a window predicts its next item from the encoder's hidden state.

    `model` is any nn.Module with forward(history) -> [B, L, H], item_embeddings() (the output
    item vectors, [I+1, H]) and score(); config needs the loss fields (check_loss_fields), lr and
    weight_decay. `seed` seeds the negatives' generator (not the global RNG), so two runs with
    one seed draw the same negatives; a resumed run restarts that stream.

    targets_per_batch (WindowData's): each batch's mean loss is weighed by its number of targets
    over this average, so every target of the epoch counts the same. Batches grouped by length
    hold from a few hundred targets (short histories) to thousands; a plain mean per batch
    would weigh a target of a short history up to 20 times more (Amazon Beauty: validation
    NDCG@10 0.0552 against 0.0597 with random batches, sampled softmax, one seed).
    """

    def __init__(
        self,
        model: nn.Module,
        n_items: int,
        config,
        seed: int = 0,
        targets_per_batch: float | None = None,
    ):
        super().__init__()
        check_loss_fields(config)
        self.model, self.n_items, self.config = model, n_items, config
        self.targets_per_batch = targets_per_batch
        self.loss_name = resolve_loss(config.loss, n_items, config.full_softmax_max_items)
        if self.loss_name != "ce" and n_items < 2:
            raise ValueError(f"loss {self.loss_name!r} samples negatives: needs >= 2 items")
        self.generator = torch.Generator().manual_seed(seed)
        if self.loss_name == "gbce":
            # A learned constant added to every logit: not part of the model (it changes no
            # ranking, so the saved weights and the exported graph do without it).
            self.beta = gbce_beta(config.negatives, n_items, config.gbce_t)
            self.offset = nn.Parameter(torch.tensor(gbce_offset(config.negatives, self.beta)))

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        inputs, targets = windows[:, 0], windows[:, 1]  # training_windows: 0 = no target
        mask = targets > 0
        hidden = self.model(inputs)[mask]  # [N, H]: only the positions that have a target
        targets = targets[mask]
        weight = len(targets) / self.targets_per_batch if self.targets_per_batch else 1.0
        return weight * self.mean_loss(hidden, targets)

    def mean_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss per target of the batch's positions (hidden [N, H], targets [N])."""
        if self.loss_name == "ce":
            # Softmax over the real items only: column 0 (padding) never competes.
            return F.cross_entropy(hidden @ self.model.item_embeddings()[1:].T, targets - 1)
        if self.loss_name == "bce":
            negatives = sample_other_items(targets, self.n_items, self.generator)
            vectors = self.model.item_embeddings(torch.cat([targets, negatives]))
            scores = (hidden.repeat(2, 1) * vectors).sum(-1)
            labels = torch.cat([torch.ones_like(targets), torch.zeros_like(negatives)])
            return F.binary_cross_entropy_with_logits(scores, labels.float())
        # gbce draws uniform negatives whatever negative_sampler says: beta assumes them.
        sampler = "uniform" if self.loss_name == "gbce" else self.config.negative_sampler
        candidates, log_expected = sample_candidates(
            targets, self.n_items, self.config.negatives, sampler, self.generator
        )
        # The vectors of these rows alone: with item attributes, the catalogue's table costs
        # more than the rest of a step.
        vectors = self.model.item_embeddings(torch.cat([targets, candidates]))
        rows = (vectors[: len(targets)], vectors[len(targets) :], targets, candidates)
        if self.loss_name == "gbce":
            return gbce(hidden, *rows, self.beta, self.offset)
        return sampled_softmax(hidden, *rows, log_expected)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # fused (as every model's Adam here): one kernel over every parameter; the item table's
        # update is otherwise a string of elementwise passes (bench/bench_step.py: 2.1 against
        # 17.7 ms a step at 59k items on 2 cores).
        return torch.optim.AdamW(
            self.parameters(),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=(0.9, 0.98),
            fused=True,
        )
