"""``train.loss`` in every sequential model: each loss trains (the loss falls, scores stay
finite) on the real data slice, and the methods take it too."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.embeddings import item_embeddings
from agent.models.base import Recommender
from agent.models.method_settings import MethodSettings
from agent.models.neural import NeuralRecommender
from agent.models.registry import build_recommender
from agent.models.training import make_ranking_loss, training_sequences


def configure(settings: Settings, **train: Any) -> Settings:
    base: dict[str, Any] = {"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 2}
    methods = MethodSettings()
    methods.semantics = methods.semantics.model_copy(update={"max_items": 0})  # no LLM here
    methods.llm_recg = methods.llm_recg.model_copy(update={"fusion_epochs": 0, "alpha": 0.0})
    return settings.model_copy(
        update={"train": settings.train.model_copy(update=base | train), "methods": methods}
    )


def _check_trained(model: Recommender, data: Dataset, history: list[dict[str, float]]) -> None:
    key = "rec" if "rec" in history[0] else "loss"
    assert all(np.isfinite(h[key]) for h in history)
    assert history[-1][key] < history[0][key], [h[key] for h in history]
    users = data.split("valid")[:5]
    food = [data.catalog.ids[i - 1] for i in data.catalog.domain_items("food")]
    scores = model.score([u.history for u in users], [food] * len(users))
    assert all(np.isfinite(s).all() and s.std() > 0 for s in scores)


@pytest.mark.parametrize(
    ("loss", "negatives"), [("ce", None), ("sampled-softmax", 32), ("gbce", 32), ("bpr", None)]
)
def test_sasrec_id_trains_with_every_loss(
    settings: Settings, slice_data: Dataset, loss: str, negatives: int | None
) -> None:
    # 4 epochs: gBCE's loss (K negatives' terms against a beta-weighted positive) can stay
    # flat for an epoch on the slice while valid NDCG@10 rises
    configured = configure(settings, loss=loss, num_negatives=negatives, epochs=4)
    model = build_recommender("sasrec-id", slice_data, configured)
    assert isinstance(model, NeuralRecommender)
    report = model.fit()
    _check_trained(model, slice_data, report.history)
    assert model.config["train"]["loss"] == loss  # recorded in the checkpoint config


def test_gbce_draws_per_position_when_not_shared(settings: Settings, slice_data: Dataset) -> None:
    """``train.gbce_shared=false``: gSASRec's own sampling, K negatives drawn per position."""
    configured = configure(settings, loss="gbce", num_negatives=32, epochs=4, gbce_shared=False)
    model = build_recommender("sasrec-id", slice_data, configured)
    assert isinstance(model, NeuralRecommender)
    loss = make_ranking_loss(model, *training_sequences(slice_data, max_len=10))
    assert loss.name == "gbce" and not loss.shared
    report = model.fit()
    _check_trained(model, slice_data, report.history)


@pytest.mark.parametrize("name", ["sasrec-text", "llm4cdsr", "semacdr"])
def test_text_models_and_methods_train_with_full_softmax(
    settings: Settings, slice_data: Dataset, name: str
) -> None:
    item_embeddings(slice_data, settings, progress=False)  # the shared session cache
    model = build_recommender(name, slice_data, configure(settings, loss="ce", hidden=16))
    report = model.fit()
    _check_trained(model, slice_data, report.history)


def test_llm_recg_takes_its_own_loss_setting(settings: Settings, slice_data: Dataset) -> None:
    item_embeddings(slice_data, settings, progress=False)
    configured = configure(settings, hidden=16)
    configured.methods.llm_recg = configured.methods.llm_recg.model_copy(
        update={"loss": "sampled-softmax", "num_negatives": 16}
    )
    model = build_recommender("llm-recg", slice_data, configured)
    report = model.fit()
    _check_trained(model, slice_data, report.history)
