"""The neural base every trained sequence model builds on: item encoders, the scoring-network
interface, left padding, and ``NeuralRecommender``, which serves any network that scores by
user vector x item vector (the SASRec and GRU4Rec recommenders, the methods' networks).

Imports point down only: this module knows no backbone and no trainer.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from agent.config import ConfigError, Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender
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


class SequenceNet(ScoringNet):
    """A ``ScoringNet`` over a sequence of item vectors (SASRec, GRU4Rec): ``items`` encodes
    ids, ``forward`` gives a hidden state per position, and the state after the most recent
    item is the user vector. The trainer needs only this."""

    items: ItemEncoder
    hidden: int

    @abstractmethod
    def forward(self, ids: Tensor, item_vectors: Tensor | None = None) -> Tensor:
        """(B, N) left-padded ids -> (B, N, hidden); ``item_vectors``: ``items(ids)`` if the
        caller has it already (the trainer encodes inputs and scored items in one call)."""

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
    # Trained with ``train.loss`` (LLM-RecG has its own ``methods.llm_recg.loss``): a default
    # checkpoint trained with another loss is not loaded in its place (agent/models/prepare.py).
    uses_train_loss = True

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


def trim_left_padding(ids: Tensor) -> Tensor:
    """Drop the leading columns that are padding in every row (outputs do not change)."""
    real = (ids > 0).any(dim=0)
    if not bool(real.any()):
        return ids[:, -1:]
    first = int(torch.nonzero(real)[0])
    return ids[:, first:]
