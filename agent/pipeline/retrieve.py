"""Stage one: the top-N candidates of a domain for a history, from any recommender.

text-knn asks the Chroma item index (nearest neighbours, history excluded); every other model
scores the domain's whole catalogue (cheap for sequence models: one forward pass per user) and
keeps the N best. Ties are broken by a seeded random key, never by catalogue order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender
from agent.models.text_knn import TextKNNRecommender


@dataclass(frozen=True)
class Retrieved:
    item_id: str
    score: float


def top_n(scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``n`` best scores, best first; ties in a seeded random order."""
    tie = rng.random(len(scores))
    order = np.lexsort((tie, -scores))  # last key sorts first: score, then the random key
    return order[:n]


def retrieve(
    model: Recommender,
    data: Dataset,
    history: Sequence[str],
    domain: str,
    n: int,
    *,
    seed: int = 0,
) -> list[Retrieved]:
    """The ``n`` best items of ``domain`` for ``history`` (history items excluded)."""
    if domain not in data.domains:
        raise ValueError(f"unknown domain {domain!r}; the data has {', '.join(data.domains)}")
    if isinstance(model, TextKNNRecommender):
        hits = model.retrieve(history, domain, n)
        if hits:
            return [Retrieved(i, s) for i, s in hits]
        # No known history item: nothing to search with; the catalogue scores below are all
        # "unknown", so the seeded order decides (honest: there is no signal).
    seen = set(history)
    pool = [data.catalog.ids[i - 1] for i in data.catalog.domain_items(domain)]
    pool = [i for i in pool if i not in seen]
    scores = model.score([list(history)], [pool])[0]
    rng = np.random.default_rng([seed, len(history)])
    picked = top_n(np.asarray(scores, dtype=np.float64), n, rng)
    return [
        Retrieved(pool[int(i)], float(scores[int(i)]))
        for i in picked
        if scores[int(i)] > UNKNOWN_ITEM_SCORE
    ]
