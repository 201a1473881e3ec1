"""``gru4rec``, the first-class GRU4Rec recommender over item IDs: registered, trained with
the shared losses, checkpoints that score the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.gru4rec import GRU4Rec
from agent.models.registry import RECOMMENDERS, build_recommender
from agent.models.sequential import GRU4RecRecommender
from eval.evaluator import make_valid_fn


def fast(settings: Settings, **train: Any) -> Settings:
    base: dict[str, Any] = {"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 2}
    return settings.model_copy(update={"train": settings.train.model_copy(update=base | train)})


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_gru4rec_trains_and_beats_its_untrained_state(
    settings: Settings, slice_data: Dataset, loss: str
) -> None:
    assert "gru4rec" in RECOMMENDERS
    configured = fast(settings, loss=loss, epochs=3)
    model = build_recommender("gru4rec", slice_data, configured)
    assert isinstance(model, GRU4RecRecommender) and isinstance(model.net, GRU4Rec)
    valid = make_valid_fn(slice_data, configured, protocol="sampled-100")
    untrained = valid(model)
    report = model.fit(valid_fn=valid)
    losses = [h["loss"] for h in report.history]
    assert losses[-1] < losses[0], losses
    assert report.best_valid_ndcg10 > untrained
    assert 1 <= report.best_epoch <= report.epochs


def test_gru4rec_checkpoint_round_trip(
    settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    model = build_recommender("gru4rec", slice_data, fast(settings, epochs=1, layers=1))
    model.fit(out=tmp_path / "ckpt")
    users = slice_data.split("test")[:8]
    cands = [list(u.items[-1:]) + list(slice_data.catalog.ids[:40]) for u in users]
    before = model.score([u.history for u in users], cands)
    loaded = build_recommender("gru4rec", slice_data, settings)  # other current sizes
    assert isinstance(loaded, GRU4RecRecommender)
    loaded.load(tmp_path / "ckpt")
    assert loaded.config["network"]["layers"] == 1
    for a, b in zip(before, loaded.score([u.history for u in users], cands), strict=True):
        np.testing.assert_array_equal(a, b)
