"""TextKNNRecommender: cosine scoring over MiniLM vectors, and Chroma retrieval that agrees."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE
from agent.models.registry import build_recommender
from agent.models.text_knn import TextKNNRecommender

pytestmark = pytest.mark.integration


@pytest.fixture()
def knn(
    store_settings: Settings, slice_data: Dataset, slice_embeddings: np.ndarray
) -> TextKNNRecommender:
    return TextKNNRecommender(slice_data, store_settings, embeddings=slice_embeddings)


def _users(data: Dataset, k: int) -> list[tuple[list[str], str]]:
    """(history, target domain) of the first k test users."""
    return [
        (list(u.history), data.domain_of(u.target))
        for u in data.split("test")[:k]
        if u.target is not None
    ]


def test_registry_builds_it(settings: Settings, slice_data: Dataset) -> None:
    model = build_recommender("text-knn", slice_data, settings)
    assert isinstance(model, TextKNNRecommender) and not model.trainable


def test_score_is_cosine_with_recency_weighted_mean(
    knn: TextKNNRecommender, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    catalog = slice_data.catalog
    history = catalog.ids[:3]
    cands = [catalog.ids[10], "unknown-item", catalog.ids[11]]
    decay = knn.settings.train.knn_recency_decay
    weights = np.array([decay**2, decay, 1.0])
    user = (weights[:, None] * slice_embeddings[[1, 2, 3]]).sum(0)
    user /= np.linalg.norm(user)
    (scores,) = knn.score([history], [cands])
    assert scores[1] == UNKNOWN_ITEM_SCORE
    assert scores[0] == pytest.approx(float(slice_embeddings[11] @ user), abs=1e-5)
    assert scores[2] == pytest.approx(float(slice_embeddings[12] @ user), abs=1e-5)
    # Unknown history items are ignored; no known history scores zeros.
    (with_unknown,) = knn.score([[*history[:2], "ghost", history[2]]], [cands])
    assert np.allclose(with_unknown, scores)
    empty = knn.score([[], ["ghost"]], [cands[:1], cands[:1]])
    assert [e.tolist() for e in empty] == [[0.0], [0.0]]


def test_recency_decay_zero_means_last_item_only(
    knn: TextKNNRecommender, slice_data: Dataset, slice_embeddings: np.ndarray
) -> None:
    knn.settings.train.knn_recency_decay = 0.0
    ids = slice_data.catalog.ids
    (scores,) = knn.score([ids[:5]], [ids[5:15]])
    assert np.allclose(scores, slice_embeddings[6:16] @ slice_embeddings[5], atol=1e-5)


def test_retrieve_matches_full_scoring(knn: TextKNNRecommender, slice_data: Dataset) -> None:
    """Chroma's approximate top-n against exact cosine over the domain's whole catalogue."""
    n = 20
    catalog = slice_data.catalog
    overlaps = []
    users = _users(slice_data, 30)
    retrieved = knn.retrieve_batch([h for h, _ in users], [d for _, d in users], n)
    for (history, domain), hits in zip(users, retrieved, strict=True):
        pool = [catalog.ids[d - 1] for d in catalog.domain_items(domain)]
        pool = [iid for iid in pool if iid not in set(history)]
        (scores,) = knn.score([history], [pool])
        exact = [pool[i] for i in np.argsort(-scores, kind="stable")[:n]]
        got = [iid for iid, _ in hits]
        assert len(got) == n
        assert not set(got) & set(history)  # history excluded
        assert all(slice_data.items[iid].domain == domain for iid in got)
        overlaps.append(len(set(got) & set(exact)) / n)
        # Reported similarities are the same cosines score() gives.
        by_id = dict(zip(pool, scores, strict=True))
        assert all(sim == pytest.approx(by_id[iid], abs=1e-4) for iid, sim in hits)
    assert np.mean(overlaps) >= 0.95, overlaps
    assert min(overlaps) >= 0.8, overlaps
    single = knn.retrieve(users[0][0], users[0][1], n)
    assert [i for i, _ in single] == [i for i, _ in retrieved[0]]


def test_retrieve_builds_the_index_on_first_use(knn: TextKNNRecommender) -> None:
    assert knn.item_index.count() == len(knn.data.catalog)
    assert knn.retrieve(["ghost"], "food", 5) == []  # no known history: nothing to go on
