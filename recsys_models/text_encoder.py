"""A BERT-style sentence encoder (MiniLM-L6-H384, as in sentence-transformers' all-MiniLM-L6-v2)
written in plain torch, so reading item text needs `tokenizers` and `safetensors` but not
`transformers` (hundreds of MB of code, none of it needed for one forward pass).

Not a recommender (no SPEC): tasks/text_encoder.py loads the checked weights into it and
tasks/text_features.py encodes item texts with it. Pooling follows the model's own
1_Pooling/config.json (mean over real tokens) and its 2_Normalize module (unit length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Config:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12


class _Layer(nn.Module):
    """One post-norm transformer block, named as BERT's checkpoint names its tensors."""

    def __init__(self, c: Config):
        super().__init__()
        self.heads = c.heads
        self.query = nn.Linear(c.hidden, c.hidden)
        self.key = nn.Linear(c.hidden, c.hidden)
        self.value = nn.Linear(c.hidden, c.hidden)
        self.attn_out = nn.Linear(c.hidden, c.hidden)
        self.attn_norm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.up = nn.Linear(c.hidden, c.intermediate)
        self.down = nn.Linear(c.intermediate, c.hidden)
        self.out_norm = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.attn_norm(x + self.attn_out(attended.transpose(1, 2).reshape(b, n, d)))
        return self.out_norm(x + self.down(nn.functional.gelu(self.up(x))))


class MiniLM(nn.Module):
    def __init__(self, config: Config = Config()):
        super().__init__()
        c = config
        self.config = c
        self.words = nn.Embedding(c.vocab_size, c.hidden)
        self.positions = nn.Embedding(c.max_positions, c.hidden)
        self.types = nn.Embedding(c.type_vocab, c.hidden)
        self.norm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.blocks = nn.ModuleList(_Layer(c) for _ in range(c.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, N] token ids and attention mask (1 real, 0 padding) -> [B, hidden] unit rows."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.words(ids) + self.positions(positions) + self.types(torch.zeros_like(ids))
        x = self.norm(x)
        real = mask.bool()
        bias = torch.zeros(real.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~real, torch.finfo(x.dtype).min)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        weight = real.unsqueeze(-1).to(x.dtype)
        pooled = (x * weight).sum(1) / weight.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=1)


def _checkpoint_names(layers: int) -> dict[str, str]:
    """This module's parameter name -> the BERT checkpoint's tensor name."""
    names = {
        "words.weight": "embeddings.word_embeddings.weight",
        "positions.weight": "embeddings.position_embeddings.weight",
        "types.weight": "embeddings.token_type_embeddings.weight",
        "norm.weight": "embeddings.LayerNorm.weight",
        "norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "up": "intermediate.dense",
        "down": "output.dense",
        "out_norm": "output.LayerNorm",
    }
    for i in range(layers):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"encoder.layer.{i}.{theirs}.{kind}"
    return names


def build(tensors: dict[str, torch.Tensor], config: Config = Config()) -> MiniLM:
    """The encoder in eval mode with `tensors` (a BERT checkpoint's state, any `bert.` prefix
    removed) loaded; ValueError naming the first missing or misshapen tensor."""
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    model = MiniLM(config)
    state = {}
    for ours, theirs in _checkpoint_names(config.layers).items():
        if theirs not in tensors:
            raise ValueError(f"checkpoint has no tensor {theirs}")
        state[ours] = tensors[theirs].float()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
