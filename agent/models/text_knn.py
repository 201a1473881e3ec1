"""Text k-NN: no training; a user is the recency-weighted mean of their items' text embeddings.

``score`` ranks given candidates by cosine; ``retrieve`` asks the Chroma item index for the
nearest items of a domain, so it works over the whole catalogue without scoring every item.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.embedder import make_embedder
from agent.items.embeddings import item_embeddings
from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender
from agent.store.chroma_store import ItemIndex, make_client

log = logging.getLogger(__name__)


class TextKNNRecommender(Recommender):
    name: ClassVar[str] = "text-knn"
    trainable: ClassVar[bool] = False

    def __init__(
        self, data: Dataset, settings: Settings, *, embeddings: np.ndarray | None = None
    ) -> None:
        super().__init__(data, settings)
        self._embeddings = embeddings
        self._index: ItemIndex | None = None

    @property
    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            self._embeddings = item_embeddings(self.data, self.settings)
        return self._embeddings

    def user_vectors(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(len(histories), dim); unit rows, or zeros for a history with no known item."""
        emb = self.embeddings
        decay = self.settings.train.knn_recency_decay
        limit = self.settings.data.max_history
        out = np.zeros((len(histories), emb.shape[1]), dtype=np.float32)
        for row, history in enumerate(histories):
            dense = self.data.catalog.encode(history)
            if limit > 0:
                dense = dense[-limit:]
            if not dense:
                continue
            # The newest item has age 0 and weight 1; older ones fade by `decay` per step.
            ages = np.arange(len(dense) - 1, -1, -1, dtype=np.float64)
            weights = decay**ages
            vec = (weights[:, None] * emb[dense]).sum(axis=0) / weights.sum()
            norm = float(np.linalg.norm(vec))
            if norm > 1e-12:
                out[row] = vec / norm
        return out

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
        users = self.user_vectors(histories)
        index = self.data.catalog.index
        emb = self.embeddings
        scores: list[np.ndarray] = []
        for user, cands in zip(users, candidates, strict=True):
            dense = np.array([index.get(c, 0) for c in cands], dtype=np.int64)
            row = (emb[dense] @ user).astype(np.float64)
            row[dense == 0] = UNKNOWN_ITEM_SCORE
            scores.append(row)
        return scores

    @property
    def item_index(self) -> ItemIndex:
        """The Chroma index for this embedder; filled (idempotently) if it lacks items."""
        if self._index is None:
            model_id = make_embedder(self.settings).model_id
            index = ItemIndex(make_client(self.settings), self.settings, model_id)
            if index.count() != len(self.data.catalog):
                log.info("item index %s is incomplete; indexing", index.name)
                index.index(self.data, self.embeddings, progress=False)
            self._index = index
        return self._index

    def retrieve(self, history: Sequence[str], domain: str, n: int) -> list[tuple[str, float]]:
        """Top-``n`` (item_id, cosine) of ``domain`` from the index, history items excluded."""
        return self.retrieve_batch([history], [domain], n)[0]

    def retrieve_batch(
        self, histories: Sequence[Sequence[str]], domains: Sequence[str], n: int
    ) -> list[list[tuple[str, float]]]:
        users = self.user_vectors(histories)
        known = np.linalg.norm(users, axis=1) > 0
        results: list[list[tuple[str, float]]] = [[] for _ in histories]
        rows = [int(r) for r in np.flatnonzero(known)]
        if not rows:
            return results  # nothing to go on; callers fall back (e.g. to popularity)
        found = self.item_index.query_batch(
            users[rows], [domains[r] for r in rows], n, [list(histories[r]) for r in rows]
        )
        for r, hits in zip(rows, found, strict=True):
            results[r] = hits
        return results
