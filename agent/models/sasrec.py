"""SASRec (Kang & McAuley, ICDM 2018), with a pluggable item encoder; the ``Recommender``
wrapper that the ID and text variants share; and its base, ``NeuralRecommender``, that serves
any network scoring by user vector x item vector (the methods' networks too).

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

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.config import ConfigError, Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE, FitReport, Recommender, ValidFn
from agent.models.checkpoint import CheckpointError, read_config, write_config

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"


class ItemEncoder(nn.Module, ABC):
    """Maps dense item ids (0 = padding, 1..num_items) to vectors of size ``dim``.

    SASRec uses the same encoder for its input sequence and for the candidates it scores, so
    swapping this module swaps the item representation (ID table, adapted text embedding)
    under one backbone.
    """

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.dim = dim

    @abstractmethod
    def forward(self, ids: Tensor) -> Tensor:
        """``ids`` of any shape -> ``ids.shape + (dim,)``; the padding id maps to zeros."""

    def all_items(self) -> Tensor:
        """Vectors of every id, row i = dense id i (row 0 = padding)."""
        device = next(self.parameters()).device
        out: Tensor = self(torch.arange(self.num_items + 1, device=device))
        return out


class IDItemEncoder(ItemEncoder):
    """One free vector per item id: the original SASRec item embedding."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__(num_items, dim)
        self.embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.xavier_normal_(self.embedding.weight)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.embedding(ids)
        return out


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
        b, n, h = query.shape

        def split(x: Tensor) -> Tensor:  # (B, N, H) -> (B, heads, N, H / heads)
            return x.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.q(query)),
            split(self.k(keys)),
            split(self.v(keys)),
            attn_mask=allowed,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out: Tensor = self.out(attended.transpose(1, 2).reshape(b, n, h))
        return out


class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, hidden)
        self.w2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.dropout(self.w2(self.dropout(F.relu(self.w1(x)))))
        return out


class SASRecBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attn = CausalSelfAttention(hidden, heads, dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = PointWiseFeedForward(hidden, dropout)

    def forward(self, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
        q = self.attn_norm(x)
        x = q + self.attn_dropout(self.attn(q, x, allowed))
        x = self.ffn(self.ffn_norm(x))
        return x * keep


class ScoringNet(nn.Module, ABC):
    """A network that scores an item after a history as <user vector, item vector>; it reads
    the last ``max_len`` items of a history."""

    max_len: int

    @abstractmethod
    def user_vectors(self, ids: Tensor) -> Tensor:
        """(B, N) left-padded histories -> (B, U) user vectors."""

    @abstractmethod
    def item_vectors(self) -> Tensor:
        """(num_items + 1, U): row i scores dense item i (row 0, padding, is never scored)."""


class SASRec(ScoringNet):
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
        self.input_dropout = nn.Dropout(dropout)
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
        for block in self.blocks:
            x = block(x, allowed, keep)
        out: Tensor = self.final_norm(x) * keep
        return out

    def last_hidden(self, ids: Tensor) -> Tensor:
        """(B, hidden): the representation after the most recent item (the last slot)."""
        out: Tensor = self(ids)
        return out[:, -1, :]

    def user_vectors(self, ids: Tensor) -> Tensor:
        return self.last_hidden(ids)

    def item_vectors(self) -> Tensor:
        return self.items.all_items()


def left_pad(seqs: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Keep each sequence's last ``length`` ids, right-aligned, zeros before them."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for row, seq in enumerate(seqs):
        tail = list(seq)[-length:] if length else []
        if tail:
            out[row, length - len(tail) :] = tail
    return out


NetT = TypeVar("NetT", bound=ScoringNet)


class NeuralRecommender(Recommender, Generic[NetT]):
    """A ``ScoringNet`` behind the ``Recommender`` interface: the SASRec variants and the
    methods' networks (agent/models/method_base.py).

    The network is built lazily (text variants need the item embeddings first) from a JSON
    config, with the config's seed, without touching the global RNG state. ``save`` writes the
    config beside the weights and ``load`` rebuilds the network from the checkpoint's own
    config, so a checkpoint scores the same under any current settings.
    """

    trainable = True

    def __init__(self, data: Dataset, settings: Settings) -> None:
        super().__init__(data, settings)
        if settings.train.threads > 0:
            torch.set_num_threads(settings.train.threads)
        self.device = torch.device(settings.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        self._net: NetT | None = None
        self._config: dict[str, Any] | None = None

    # ---- what a model provides -----------------------------------------------------------
    @abstractmethod
    def default_config(self) -> dict[str, Any]:
        """The config (JSON-able, with the ``seed``) of a new network, from the current
        settings and data."""

    @abstractmethod
    def make_net(self, config: dict[str, Any]) -> NetT:
        """The untrained network ``config`` describes (called under its seed)."""

    def check_config(self, config: dict[str, Any], path: Path) -> None:
        """Raise ``CheckpointError`` if a saved config cannot run on the current inputs."""

    # ---- network -------------------------------------------------------------------------
    def build(self, config: dict[str, Any]) -> NetT:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config["seed"]))
            net = self.make_net(config)
        self._config = config
        self._net = net.to(self.device)
        return self._net

    @property
    def net(self) -> NetT:
        if self._net is None:
            return self.build(self.default_config())
        return self._net

    @property
    def config(self) -> dict[str, Any]:
        self.net  # noqa: B018  (builds it)
        assert self._config is not None
        return self._config

    # ---- Recommender ---------------------------------------------------------------------
    def encode_histories(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Dense ids, unknown items dropped, last ``max_len`` kept, left-padded."""
        catalog = self.data.catalog
        return left_pad([catalog.encode(h) for h in histories], self.net.max_len)

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[Sequence[str]], batch_size: int = 512) -> Tensor:
        """(U, user dim) user vectors, in eval mode."""
        net = self.net
        was_training = net.training
        net.eval()
        try:
            ids = torch.from_numpy(self.encode_histories(histories))
            if len(ids) == 0:  # no rows, as wide as the vector of a history without items
                return net.user_vectors(torch.zeros(1, 1, dtype=torch.long, device=self.device))[:0]
            parts = [
                net.user_vectors(trim_left_padding(ids[s : s + batch_size]).to(self.device))
                for s in range(0, len(ids), batch_size)
            ]
        finally:
            net.train(was_training)
        return torch.cat(parts)

    @torch.no_grad()
    def item_table(self) -> Tensor:
        net = self.net
        was_training = net.training
        net.eval()
        try:
            return net.item_vectors()
        finally:
            net.train(was_training)

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
        if not histories:
            return []
        index = self.data.catalog.index
        table = self.item_table()
        # Encoding a long candidate list (a whole domain) once serves every user that shares
        # the same list object, which is how full ranking passes it.
        encoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        out: list[np.ndarray] = []
        batch = 512
        for start in range(0, len(histories), batch):
            users = self.user_vectors(histories[start : start + batch], batch_size=batch)
            # one matmul scores every item for the batch; each user then picks its candidates
            all_scores = (users @ table.T).float().cpu().numpy()
            for row, cands in zip(all_scores, candidates[start : start + batch], strict=True):
                key = id(cands)
                if key not in encoded:
                    ids = np.fromiter(
                        (index.get(c, 0) for c in cands), dtype=np.int64, count=len(cands)
                    )
                    encoded[key] = (ids, ids == 0)
                ids, unknown = encoded[key]
                scores = row[ids].astype(np.float64)
                scores[unknown] = UNKNOWN_ITEM_SCORE
                out.append(scores)
        return out

    def save(self, path: Path) -> None:
        write_config(path, self.name, self.data.catalog, self.config)
        torch.save(self.net.state_dict(), path / MODEL_FILE)

    def load(self, path: Path) -> None:
        config = read_config(path, self.name, self.data.catalog)
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise CheckpointError(f"no {MODEL_FILE}", path=path)
        self.check_config(config, path)
        net = self.build(config)
        state = torch.load(model_path, map_location=self.device, weights_only=True)
        net.load_state_dict(state)


class SASRecRecommender(NeuralRecommender[SASRec]):
    """A SASRec network behind the ``Recommender`` interface; subclasses pick the item encoder."""

    # ---- what a variant provides -------------------------------------------------------
    @abstractmethod
    def encoder_config(self) -> dict[str, Any]:
        """What ``build_encoder`` needs, from the current settings and data (JSON-able)."""

    @abstractmethod
    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        """The item encoder described by ``config`` (saved in checkpoints)."""

    def check_encoder_config(self, saved: dict[str, Any], path: Path) -> None:
        """Raise ``CheckpointError`` if the saved encoder cannot run on the current inputs."""

    # ---- network -------------------------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        t = self.settings.train
        return {
            "network": {
                "max_len": t.max_len,
                "layers": t.layers,
                "heads": t.heads,
                "dropout": t.dropout,
            },
            "encoder": self.encoder_config(),
            "seed": self.settings.seed,
            "train": t.model_dump(),
        }

    def make_net(self, config: dict[str, Any]) -> SASRec:
        return SASRec(self.build_encoder(config["encoder"]), **config["network"])

    def check_config(self, config: dict[str, Any], path: Path) -> None:
        self.check_encoder_config(config["encoder"], path)

    @property
    def network(self) -> SASRec:
        """``net``: the SASRec network, built on first use."""
        return self.net

    @property
    def max_len(self) -> int:
        return self.net.max_len

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        from agent.models.training import fit_sequence_model  # the trainer imports this module

        return fit_sequence_model(self, valid_fn=valid_fn, out=out)


def trim_left_padding(ids: Tensor) -> Tensor:
    """Drop the leading columns that are padding in every row (outputs do not change)."""
    real = (ids > 0).any(dim=0)
    if not bool(real.any()):
        return ids[:, -1:]
    first = int(torch.nonzero(real)[0])
    return ids[:, first:]
