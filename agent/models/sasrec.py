"""SASRec (Kang & McAuley, ICDM 2018), the network, with a pluggable item encoder. The
recommenders built on it are in agent/models/sequential.py; the base they share in
agent/models/neural.py.

Network, as in the paper (and its reference TF code):

    E = item_encoder(ids) * sqrt(d) + P[position]          (input embedding, Eq. 2)
    for each of L blocks:
        Q = LayerNorm(E)
        E = Q + Dropout(MultiHeadAttention(Q, E, E, causal))   (Eq. 3-5, residual on Q)
        E = LayerNorm(E)
        E = E + Dropout(W2 Dropout(ReLU(W1 E + b1)) + b2)      (point-wise FFN, Eq. 6)
        E = E * not_padding
    F = LayerNorm(E)
    score(item i after the prefix ending at t) = <F_t, item_encoder(i)>   (Eq. 7, shared embedding)

Attention is causal: position t attends only to positions <= t. (The LLM4CDSR reference code
comments this mask out, which lets a next-item loss read the answer; we do not.) Sequences are
left-padded; padded keys are masked out, so padding never changes a real position's output.

Positions count back from the most recent item (0 = the last slot). For a fixed max_len this is
exactly the paper's left-padded absolute positions, and it makes the output independent of how
much left padding a batch carries, which lets batches be trimmed to their longest sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.models.dropout import Dropout, fast_kernels_enabled
from agent.models.dropout import dropout as fast_dropout

# re-exported: the encoders and padding helpers lived here before agent/models/neural.py
from agent.models.neural import (
    MODEL_FILE,
    IDItemEncoder,
    ItemEncoder,
    ScoringNet,
    SequenceNet,
    left_pad,
    trim_left_padding,
)

__all__ = [
    "MODEL_FILE",
    "IDItemEncoder",
    "ItemEncoder",
    "SASRec",
    "ScoringNet",
    "SequenceNet",
    "left_pad",
    "trim_left_padding",
]


class CausalSelfAttention(nn.Module):
    """Multi-head attention whose queries are LayerNorm(E) and keys/values E (as in SASRec)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, query: Tensor, keys: Tensor, allowed: Tensor) -> Tensor:
        """``allowed`` (B, 1, N, N): bool, or the same mask as an additive float one
        (``attention_bias``, which ``SASRec`` builds once for all blocks in training)."""
        b, n, h = query.shape

        def split(x: Tensor) -> Tensor:  # (B, N, H) -> (B, heads, N, H / heads)
            return x.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(keys)), split(self.v(keys))
        if self.training and self.dropout > 0.0 and fast_kernels_enabled():
            # what scaled_dot_product_attention computes (its math path, the one it takes on
            # CPU with dropout), with the cheaper dropout mask of agent/models/dropout.py
            bias = allowed if allowed.dtype != torch.bool else attention_bias(allowed, q.dtype)
            scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
            weights = fast_dropout(torch.softmax(scores + bias, dim=-1), self.dropout)
            attended = torch.matmul(weights, v)
        else:
            mask = allowed if allowed.dtype == torch.bool else allowed == 0
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        out: Tensor = self.out(attended.transpose(1, 2).reshape(b, n, h))
        return out


def attention_bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """The bool mask ``allowed`` as an additive one: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf")
    )


class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, hidden)
        self.w2 = nn.Linear(hidden, hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.dropout(self.w2(self.dropout(F.relu(self.w1(x)))))
        return out


class SASRecBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.attn_dropout = Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = PointWiseFeedForward(hidden, dropout)

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        q = self.attn_norm(x)
        x = q + self.attn_dropout(self.attn(q, x, allowed))
        x = self.ffn(self.ffn_norm(x))
        return x * keep


class SASRec(SequenceNet):
    """The SASRec backbone: ids (B, N), left-padded with 0 -> hidden states (B, N, hidden)."""

    def __init__(
        self,
        items: ItemEncoder,
        *,
        max_len: int,
        layers: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.items = items
        self.hidden = items.dim
        self.max_len = max_len
        self.positions = nn.Embedding(max_len, self.hidden)
        self.input_dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            [SASRecBlock(self.hidden, heads, dropout) for _ in range(layers)]
        )
        self.final_norm = nn.LayerNorm(self.hidden, eps=1e-8)
        nn.init.xavier_normal_(self.positions.weight)

    @staticmethod
    def attention_mask(ids: Tensor) -> Tensor:
        """(B, 1, N, N) bool, True where query i may attend to key j: j <= i and j is real.

        A padded query would have no key at all (softmax of nothing is NaN), so each position
        may always see itself; padded outputs are zeroed afterwards anyway.
        """
        n = ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        real_keys = (ids > 0)[:, None, None, :]
        eye = torch.eye(n, dtype=torch.bool, device=ids.device)
        return (causal & real_keys) | eye

    def forward(self, ids: Tensor, item_vectors: Tensor | None = None) -> Tensor:
        """``item_vectors``: ``self.items(ids)`` if the caller has it already (the trainer
        encodes inputs, targets and negatives in one call)."""
        n = ids.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} > max_len {self.max_len}")
        keep = (ids > 0).unsqueeze(-1).to(self.positions.weight.dtype)
        # distance from the end: the most recent slot is position 0 (see the module docstring)
        pos = torch.arange(n - 1, -1, -1, device=ids.device)
        if item_vectors is None:
            item_vectors = self.items(ids)
        x = item_vectors * math.sqrt(self.hidden) + self.positions(pos)
        x = self.input_dropout(x) * keep
        allowed = self.attention_mask(ids)
        if self.training:  # the additive form, built once for every block
            allowed = attention_bias(allowed, x.dtype)
        for block in self.blocks:
            x = block(x, allowed, keep)
        out: Tensor = self.final_norm(x) * keep
        return out
