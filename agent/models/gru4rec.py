"""GRU4Rec (Hidasi et al., ICLR 2016) over a pluggable item encoder: the network of the
``gru4rec`` recommender (agent/models/sequential.py) and one of LLM-RecG's backbones
(METHODS.md, LLM-RecG, "Backbones").

    x_t = Dropout(item_encoder(id_t))
    h_t = GRU(x_t, h_{t-1})                (``layers`` stacked GRU layers, h_0 = 0)
    F_t = LayerNorm(h_t)
    score(item i after the prefix ending at t) = <F_t, item_encoder(i)>

It has the SASRec backbone's interface (``items``, ``hidden``, ``max_len``, ``forward(ids,
item_vectors)`` -> (B, N, hidden), ``last_hidden``), so a method can swap one for the other.
A recurrent network is causal by construction. Inputs are left-padded like SASRec's; the GRU
must not read the padding (its zero vectors would still move the state), so each row is
shifted to start at column 0, packed by length, run, and shifted back: padded positions
output zeros and the amount of padding changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from agent.models.dropout import Dropout
from agent.models.neural import ItemEncoder, SequenceNet


class GRU4Rec(SequenceNet):
    def __init__(
        self, items: ItemEncoder, *, max_len: int, layers: int = 1, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.items = items
        self.hidden = items.dim
        self.max_len = max_len
        self.input_dropout = Dropout(dropout)
        self.gru = nn.GRU(
            self.hidden,
            self.hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.final_norm = nn.LayerNorm(self.hidden, eps=1e-8)

    def forward(self, ids: Tensor, item_vectors: Tensor | None = None) -> Tensor:
        n = ids.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} > max_len {self.max_len}")
        if item_vectors is None:
            item_vectors = self.items(ids)
        x = self.input_dropout(item_vectors)
        lengths = (ids > 0).sum(1)
        cols = torch.arange(n, device=ids.device)
        # left-aligned view: column j of row r is original column (n - len_r) + j
        shift = (n - lengths).unsqueeze(1)
        src = (cols.unsqueeze(0) + shift).clamp(max=n - 1)
        aligned = x.gather(1, src.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        packed = pack_padded_sequence(
            aligned, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=n)
        # back to left padding: original column c holds aligned column c - (n - len_r)
        back = (cols.unsqueeze(0) - shift).clamp(min=0)
        h = out.gather(1, back.unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        keep = (ids > 0).unsqueeze(-1).to(h.dtype)
        result: Tensor = self.final_norm(h) * keep
        return result
