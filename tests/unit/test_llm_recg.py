"""LLM-RecG and its GRU4Rec backbone: causality, padding, zero-shot training and scoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.embeddings import item_embeddings
from agent.models.gru4rec import GRU4Rec
from agent.models.llm_recg import LLMRecGRecommender, RecGNet
from agent.models.method_settings import MethodSettings
from agent.models.method_training import train_rows
from agent.models.registry import build_recommender
from agent.models.sasrec import IDItemEncoder, left_pad


@pytest.fixture()
def table(settings: Settings, slice_data: Dataset) -> np.ndarray:
    return item_embeddings(slice_data, settings, progress=False)


def configure(settings: Settings, **recg: Any) -> Settings:
    methods = MethodSettings()
    base: dict[str, Any] = {"clusters": 4, "fusion_epochs": 1, "gen_items": 64, "alpha": 0.01}
    methods.llm_recg = methods.llm_recg.model_copy(update=base | recg)
    train = settings.train.model_copy(
        update={"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 2, "hidden": 16}
    )
    return settings.model_copy(update={"train": train, "methods": methods})


def gru(max_len: int = 20) -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(IDItemEncoder(50, 16), max_len=max_len, layers=2, dropout=0.3).eval()


def test_gru4rec_future_items_do_not_change_earlier_outputs() -> None:
    net = gru()
    seq = torch.tensor([[3, 7, 1, 9, 4, 12, 8, 30, 2, 5]])
    changed = seq.clone()
    changed[0, 7] = 41
    with torch.no_grad():
        a, b = net(seq), net(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gru4rec_padding_changes_nothing() -> None:
    net = gru()
    items = [4, 8, 15, 16, 23, 42]
    with torch.no_grad():
        short = net(torch.from_numpy(left_pad([items], 8)))
        long = net(torch.from_numpy(left_pad([items], 20)))
        batch = net(torch.from_numpy(left_pad([items, [1, 2, 3, 4, 5, 6, 7, 9, 10]], 20)))
        empty = net(torch.zeros(2, 5, dtype=torch.long))
    torch.testing.assert_close(short[:, -6:], long[:, -6:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch[:1], long, rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(long[:, :-6]) == 0 and torch.count_nonzero(empty) == 0
    with pytest.raises(ValueError, match="max_len"):
        gru(max_len=4)(torch.ones(1, 5, dtype=torch.long))


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_zero_shot_training_and_scoring_an_unseen_domain(
    settings: Settings, slice_data: Dataset, table: np.ndarray, backbone: str
) -> None:
    cfg = configure(settings, backbone=backbone, source_domains=["food"])
    model = LLMRecGRecommender(slice_data, cfg, table=table)
    rows = train_rows(slice_data, model.net.max_len, domains=["food"])
    kitchen_ids = set(slice_data.catalog.domain_items("kitchen").tolist())
    assert not kitchen_ids & set(np.unique(rows.inputs).tolist() + rows.targets.ravel().tolist())
    untrained = model.net.item_vectors().detach().clone()
    report = model.fit()
    phase1 = [h for h in report.history if "phase" not in h]
    assert phase1[-1]["rec"] < phase1[0]["rec"] and phase1[-1]["loss"] < phase1[0]["loss"]
    assert "gen" in phase1[0] and phase1[0]["gen"] < 0  # -alpha * diversity dominates
    assert [h["phase"] for h in report.history if "phase" in h] == [2.0]
    net = model.net
    assert isinstance(net, RecGNet) and bool(net.get_buffer("fused"))
    assert torch.count_nonzero(net.get_buffer("centroids")) > 0

    # kitchen items: never in training, scored from their text by the trained projections
    kitchen = [slice_data.catalog.ids[i - 1] for i in sorted(kitchen_ids)]
    users = slice_data.split("test")[:5]
    histories = [[i for i in u.history if slice_data.domain_of(i) == "kitchen"] for u in users]
    before = net.item_vectors().detach().clone()
    scores = model.score(histories, [kitchen] * len(users))
    assert all(np.isfinite(s).all() and s.std() > 0 for s in scores)
    after = net.item_vectors().detach()
    torch.testing.assert_close(before, after, rtol=0, atol=0)  # scoring re-creates nothing
    kitchen_rows = torch.tensor(sorted(kitchen_ids))
    assert not torch.allclose(untrained[kitchen_rows], after[kitchen_rows])  # trained layers


def test_fusion_attention_and_the_sem_ablation(
    settings: Settings, slice_data: Dataset, table: np.ndarray
) -> None:
    model = LLMRecGRecommender(
        slice_data, configure(settings, alpha=0.0, sequence_level=False), table=table
    )
    report = model.fit()
    net = model.net
    assert isinstance(net, RecGNet)
    assert "gen" not in report.history[0] and not bool(net.get_buffer("fused"))
    y = torch.randn(3, 16)
    torch.testing.assert_close(net.fuse(y), y)  # unfused: g = y
    net.get_buffer("centroids").copy_(torch.randn(4, 16))
    net.get_buffer("fused").fill_(True)
    torch.testing.assert_close(net.fuse(y), y)  # W_f = [I 0] at the start: still g = y


def test_checkpoint_round_trip_keeps_centroids_and_fusion(
    settings: Settings, slice_data: Dataset, tmp_path: Path
) -> None:
    model = build_recommender("llm-recg", slice_data, configure(settings))
    model.fit(out=tmp_path / "ckpt")
    users = slice_data.split("test")[:6]
    cands = [list(u.items[-1:]) + list(slice_data.catalog.ids[:40]) for u in users]
    before = model.score([u.history for u in users], cands)
    loaded = build_recommender("llm-recg", slice_data, settings)
    loaded.load(tmp_path / "ckpt")
    assert (
        isinstance(loaded, LLMRecGRecommender)
        and isinstance(loaded.net, RecGNet)
        and bool(loaded.net.get_buffer("fused"))
    )
    for a, b in zip(before, loaded.score([u.history for u in users], cands), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
