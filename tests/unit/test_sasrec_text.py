"""SASRec over frozen text embeddings: unseen items scored from text, checkpoints, adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.embeddings import item_embeddings
from agent.models.checkpoint import CheckpointError
from agent.models.registry import build_recommender
from agent.models.sasrec_text import SASRecTextRecommender, TextItemEncoder, whitening


@pytest.fixture()
def table(settings: Settings, slice_data: Dataset) -> np.ndarray:
    return item_embeddings(slice_data, settings, progress=False)


def fast(settings: Settings, **train: Any) -> Settings:
    base: dict[str, Any] = {"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 2}
    return settings.model_copy(update={"train": settings.train.model_copy(update=base | train)})


def test_encoder_is_frozen_and_padding_is_zero(table: np.ndarray) -> None:
    enc = TextItemEncoder(table, 16, adapter="linear")
    assert "table" not in enc.state_dict()
    assert all(p.shape[-1] != len(table) for p in enc.parameters())  # no per-item parameter
    vecs = enc(torch.tensor([[0, 1, 2]]))
    assert vecs.shape == (1, 3, 16) and torch.count_nonzero(vecs[0, 0]) == 0
    with pytest.raises(ValueError, match="adapter"):
        TextItemEncoder(table, 16, adapter="moe")


def test_whitening_decorrelates_and_survives_a_state_dict_load(table: np.ndarray) -> None:
    mean, proj = whitening(table[1:])
    feats = (table[1:] - mean) @ proj
    cov = np.cov(feats, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(len(cov)), atol=1e-3)
    few = whitening(table[1:20])[1]  # 19 items span at most 18 centred directions
    assert few.shape == (table.shape[1], 18)
    saved = TextItemEncoder(table, 16)
    other = TextItemEncoder(table, 16)
    other.get_buffer("mean").add_(1.0)  # as if whitened from other statistics
    other.features = other._features()
    other.load_state_dict(saved.state_dict())  # the hook recomputes the derived features
    torch.testing.assert_close(other.get_buffer("features"), saved.get_buffer("features"))
    ids = torch.tensor([[0, 3, 5]])
    torch.testing.assert_close(other(ids), saved(ids))


@pytest.mark.parametrize("adapter", ["mlp", "linear"])
def test_training_scores_items_unseen_in_training(
    settings: Settings, slice_data: Dataset, table: np.ndarray, adapter: str
) -> None:
    model = SASRecTextRecommender(slice_data, fast(settings, text_adapter=adapter), table=table)
    report = model.fit()
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    in_train = {i for u in slice_data.iter_split("train") for i in u.history}
    unseen = [i for i in slice_data.catalog.ids if i not in in_train][:20]
    assert len(unseen) >= 2
    user = slice_data.split("valid")[0]
    scores = model.score([user.history], [unseen])[0]
    assert np.isfinite(scores).all() and len(set(scores.round(6).tolist())) > 1


def test_checkpoint_round_trip_and_other_embeddings(
    settings: Settings, slice_data: Dataset, table: np.ndarray, tmp_path: Path
) -> None:
    model = build_recommender("sasrec-text", slice_data, fast(settings, epochs=1))
    model.fit(out=tmp_path / "ckpt")
    users = slice_data.split("test")[:10]
    cands = [list(u.items[-1:]) + list(slice_data.catalog.ids[:30]) for u in users]
    before = model.score([u.history for u in users], cands)
    loaded = build_recommender("sasrec-text", slice_data, settings)  # table from the cache
    loaded.load(tmp_path / "ckpt")
    after = loaded.score([u.history for u in users], cands)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    other = SASRecTextRecommender(slice_data, settings, table=table[:, ::-1].copy())
    with pytest.raises(CheckpointError, match="embeddings differ"):
        other.load(tmp_path / "ckpt")
