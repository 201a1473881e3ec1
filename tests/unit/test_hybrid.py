"""``sasrec-hybrid``: ID embedding + adapted text vector; items unseen in training are scored
from their text alone and counted in the fit report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.embeddings import item_embeddings
from agent.models.registry import build_recommender
from agent.models.sasrec_hybrid import HybridItemEncoder, SASRecHybridRecommender, seen_items


@pytest.fixture()
def table(settings: Settings, slice_data: Dataset) -> np.ndarray:
    return item_embeddings(slice_data, settings, progress=False)


def fast(settings: Settings, **train: Any) -> Settings:
    base: dict[str, Any] = {"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 2}
    return settings.model_copy(update={"train": settings.train.model_copy(update=base | train)})


def test_encoder_adds_ids_only_for_seen_items(table: np.ndarray) -> None:
    seen = np.zeros(len(table), dtype=bool)
    seen[1:4] = True
    enc = HybridItemEncoder(table, 8, seen, width=16)
    with torch.no_grad():
        enc.ids.weight.add_(1.0)  # make every ID vector clearly non-zero
    ids = torch.tensor([0, 1, 2, 5, 6])
    out, text = enc(ids), enc.text(ids)
    assert torch.count_nonzero(out[0]) == 0  # padding
    torch.testing.assert_close(out[3:], text[3:])  # unseen: text alone
    assert not torch.allclose(out[1:3], text[1:3])  # seen: text + own ID vector
    out.sum().backward()
    assert enc.ids.weight.grad is not None
    assert enc.ids.weight.grad[5].abs().sum() == 0  # an unseen ID never trains
    with pytest.raises(ValueError, match="seen has shape"):
        HybridItemEncoder(table, 8, seen[:-1])


def test_training_counts_unseen_items_and_scores_them_from_text(
    settings: Settings, slice_data: Dataset, table: np.ndarray, tmp_path: Path
) -> None:
    model = SASRecHybridRecommender(slice_data, fast(settings, loss="ce"), table=table)
    report = model.fit(out=tmp_path / "ckpt")
    seen = seen_items(slice_data)
    assert report.items_unseen == len(slice_data.catalog) - int(seen.sum()) > 0
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    unseen = [slice_data.catalog.ids[i - 1] for i in np.flatnonzero(~seen)[1:21]]
    user = slice_data.split("valid")[0]
    scores = model.score([user.history], [unseen])[0]
    assert np.isfinite(scores).all() and len(set(scores.round(6).tolist())) > 1
    # the checkpoint keeps which items had an ID part, and scores the same
    loaded = build_recommender("sasrec-hybrid", slice_data, settings)
    assert isinstance(loaded, SASRecHybridRecommender)
    loaded.load(tmp_path / "ckpt")
    np.testing.assert_allclose(
        loaded.score([user.history], [unseen])[0], scores, rtol=1e-6, atol=1e-6
    )
    encoder = loaded.net.items
    assert isinstance(encoder, HybridItemEncoder)
    np.testing.assert_array_equal(encoder.get_buffer("seen").numpy(), seen)
