"""Most-popular baseline: counts over train histories only, unknown candidates last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset, Item, UserSequence
from agent.models.base import UNKNOWN_ITEM_SCORE
from agent.models.checkpoint import CheckpointError
from agent.models.popularity import PopularityRecommender
from agent.models.registry import build_recommender


def tiny(extra_item: bool = False) -> Dataset:
    items = {
        i: Item(i, d, f"title {i}")
        for i, d in [
            ("f1", "food"),
            ("f2", "food"),
            ("f3", "food"),
            ("k1", "kitchen"),
            ("k2", "kitchen"),
        ]
    }
    if extra_item:
        items["k3"] = Item("k3", "kitchen", "title k3")
    users = [
        UserSequence("u1", "train", ("f1", "f2", "k1")),
        UserSequence("u2", "train", ("f1", "k1", "k1")),
        UserSequence("u3", "train", ("f1", "k2")),
        # f3 is only ever a held-out target: it must not be counted
        UserSequence("v1", "valid", ("f2", "f3")),
        UserSequence("t1", "test", ("k2", "f3")),
    ]
    return Dataset("tiny", items, users)


def test_scores_are_train_history_counts(settings: Settings) -> None:
    model = PopularityRecommender(tiny(), settings)
    model.fit()
    scores = model.score([["f2"], []], [["f1", "f2", "f3", "nope"], ["k1", "k2"]])
    np.testing.assert_array_equal(scores[0], [3.0, 1.0, 0.0, UNKNOWN_ITEM_SCORE])
    np.testing.assert_array_equal(scores[1], [3.0, 1.0])
    assert model.domain_counts()["food"] == {"f1": 3, "f2": 1}


def test_registry_and_slice_ranking(settings: Settings, slice_data: Dataset) -> None:
    model = build_recommender("popularity", slice_data, settings)
    top = max(slice_data.catalog.ids, key=lambda i: model.score([[]], [[i]])[0][0])
    counts = sum(u.history.count(top) for u in slice_data.iter_split("train"))
    assert counts > 1 and model.score([[]], [[top]])[0][0] == counts


def test_save_load_round_trip_and_data_mismatch(settings: Settings, tmp_path: Path) -> None:
    model = PopularityRecommender(tiny(), settings)
    fit = model.fit(out=tmp_path / "pop")
    assert fit.checkpoint == tmp_path / "pop"
    loaded = PopularityRecommender(tiny(), settings)
    loaded.load(tmp_path / "pop")
    cands = [["f1", "f2", "f3", "k1", "k2", "zz"]]
    np.testing.assert_array_equal(loaded.score([[]], cands)[0], model.score([[]], cands)[0])
    other = PopularityRecommender(tiny(extra_item=True), settings)
    with pytest.raises(CheckpointError, match="other data"):
        other.load(tmp_path / "pop")
