"""log-sum-exp of each position's scores against N shared negatives, in blocks of rows.

The sampled softmax scores every position of a batch against the same N candidates: a [P, N]
matrix (about 5,500 x 2,048 per SASRec batch at MovieLens-25M's shape, 45 MB). Built whole, each
elementwise pass over it (the logQ shift, the mask, the log-softmax and their gradients) streams
it through memory, and on a 2-core machine those passes cost more than the matrix product that
makes it. Here the scores are made, shifted, masked and reduced a block of rows at a time, so
each block stays in cache; the backward pass makes each block again rather than keeping the
matrix (one more product, far cheaper than the memory it saves). The result equals
torch.logsumexp over the masked matrix to float rounding (tests/test_sequence_losses.py).
"""

from __future__ import annotations

import torch

ROWS_PER_BLOCK = 256  # 256 x 2,048 float32 scores: 2 MiB, within a core's L2


def matching_pairs(targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[2, M] (row, column) pairs where candidates[column] == targets[row], rows ascending: the
    few scores a row must not count (a candidate equal to the target is not its negative). Found
    by sorting the candidates, never by comparing all P x N pairs."""
    order = candidates.argsort()
    ranked = candidates[order]
    low = torch.searchsorted(ranked, targets)
    counts = torch.searchsorted(ranked, targets, right=True) - low
    rows = torch.repeat_interleave(torch.arange(len(targets), device=targets.device), counts)
    first = torch.repeat_interleave(low - (counts.cumsum(0) - counts), counts)
    return torch.stack([rows, order[first + torch.arange(len(rows), device=targets.device)]])


class _NegativeLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, vectors, shift, excluded, dtype):
        out = hidden.new_empty(len(hidden))
        for rows, scores in _blocks(hidden, vectors, shift, excluded, dtype):
            out[rows] = torch.logsumexp(scores, dim=1)
        ctx.save_for_backward(hidden, vectors, shift, excluded, out)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return _NegativeLogSumExp.gradients(grad, *ctx.saved_tensors, ctx.dtype)

    @staticmethod
    def gradients(grad, hidden, vectors, shift, excluded, out, dtype):
        # A row whose candidates are all excluded has out = -inf and no gradient: shifting its
        # -inf scores by 0 instead keeps exp() at 0 rather than NaN.
        out = torch.where(torch.isfinite(out), out, torch.zeros_like(out))
        grad_hidden = torch.empty_like(hidden)
        grad_vectors, grad_shift = torch.zeros_like(vectors), torch.zeros_like(shift)
        hidden_p, vectors_p = hidden.to(dtype), vectors.to(dtype)
        for rows, scores in _blocks(hidden, vectors, shift, excluded, dtype):
            # d logsumexp / d score = softmax: exp(score - out), times the incoming gradient.
            weights = scores.sub_(out[rows, None]).exp_().mul_(grad[rows, None])
            grad_shift += weights.sum(0)
            weights = weights.to(dtype)
            grad_hidden[rows] = weights @ vectors_p
            grad_vectors += weights.T @ hidden_p[rows]
        return grad_hidden, grad_vectors, grad_shift, None, None


def _blocks(hidden, vectors, shift, excluded, dtype):
    """(row slice, [rows, N] float32 scores hidden . vectors + shift with the excluded pairs at
    -inf), the product in `dtype`."""
    hidden, transposed = hidden.to(dtype), vectors.T.to(dtype).contiguous()
    starts = range(0, len(hidden), ROWS_PER_BLOCK)
    edges = torch.searchsorted(
        excluded[0].contiguous(), torch.tensor([*starts, len(hidden)], device=hidden.device)
    ).tolist()
    for k, start in enumerate(starts):
        rows = slice(start, start + ROWS_PER_BLOCK)
        if dtype == torch.float32:
            scores = torch.addmm(shift.unsqueeze(0), hidden[rows], transposed)
        else:
            scores = torch.mm(hidden[rows], transposed).float().add_(shift)
        pairs = excluded[:, edges[k] : edges[k + 1]]
        scores[pairs[0] - start, pairs[1]] = float("-inf")
        yield rows, scores


def negative_logsumexp(
    hidden: torch.Tensor, vectors: torch.Tensor, shift: torch.Tensor, excluded: torch.Tensor
) -> torch.Tensor:
    """[P]: log sum over j of exp(hidden[i] . vectors[j] + shift[j]), skipping the (i, j) pairs
    in `excluded` ([2, M], rows ascending: matching_pairs). hidden [P, H], vectors [N, H], shift
    [N]; differentiable in all three. Where autocast is on (train.precision bf16-mixed), the
    products read and return its dtype, as autocast's own matmul does, in the forward pass and
    in the backward one alike (which makes the scores again): on a CPU with native bf16, the
    loss takes about a quarter less time (bench/bench_step.py). The exponentials, sums and
    gradients stay float32.
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
    with torch.autocast(device, enabled=False):
        return _NegativeLogSumExp.apply(
            hidden.float(), vectors.float(), shift.float(), excluded, dtype
        )
