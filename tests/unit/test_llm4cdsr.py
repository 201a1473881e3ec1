"""LLM4CDSR on the real data slice: domain threads, causality, score parts, training, ablations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.config import Settings
from agent.data.schema import Dataset, UserSequence
from agent.items.embeddings import item_embeddings
from agent.models.llm4cdsr import (
    LLM4CDSRRecommender,
    TriThreadNet,
    cached_profile_vectors,
    domain_subsequence,
)
from agent.models.method_settings import MethodSettings
from agent.models.method_training import train_rows
from agent.models.registry import build_recommender


@pytest.fixture()
def table(settings: Settings, slice_data: Dataset) -> np.ndarray:
    return item_embeddings(slice_data, settings, progress=False)


@pytest.fixture(scope="module")
def cross_data(slice_data: Dataset) -> Dataset:
    """The slice plus its test users' histories as extra train rows: the slice's own train
    users each shop in one domain, and the contrastive term needs users of both."""
    extra = [UserSequence(f"{u.user_id}#h", "train", u.history) for u in slice_data.split("test")]
    return replace(slice_data, users=[*slice_data.users, *extra])


def configure(settings: Settings, **llm4cdsr: Any) -> Settings:
    methods = MethodSettings()
    methods.llm4cdsr = methods.llm4cdsr.model_copy(update=llm4cdsr)
    train = settings.train.model_copy(
        update={"batch_size": 64, "lr": 5e-3, "dropout": 0.1, "epochs": 2, "hidden": 16}
    )
    return settings.model_copy(update={"train": train, "methods": methods})


def test_domain_subsequence_by_hand() -> None:
    ids = torch.tensor([[0, 5, 7, 6, 9]])
    marked = torch.tensor([[False, True, False, True, False]])
    sub, where = domain_subsequence(ids, marked)
    assert sub.tolist() == [[0, 0, 0, 5, 6]]
    assert where.tolist() == [[-1, 3, 3, 4, 4]]  # latest marked item at or before each slot


def _net(settings: Settings, data: Dataset, table: np.ndarray) -> TriThreadNet:
    rec = LLM4CDSRRecommender(data, configure(settings), table=table)
    net = rec.net
    assert isinstance(net, TriThreadNet)
    return net.eval()


def test_a_later_item_changes_no_earlier_logit(
    settings: Settings, slice_data: Dataset, table: np.ndarray
) -> None:
    net = _net(settings, slice_data, table)
    food, kitchen = (slice_data.catalog.domain_items(d) for d in ("food", "kitchen"))
    x = torch.tensor([[food[0], kitchen[1], food[2], kitchen[3], food[4], kitchen[5]]])
    y = torch.tensor([[kitchen[1], food[2], kitchen[3], food[4], kitchen[5], food[6]]])
    neg = torch.tensor(
        [[[kitchen[9]], [food[9]], [kitchen[8]], [food[8]], [kitchen[7]], [food[7]]]]
    )
    changed = x.clone()
    changed[0, 4] = food[20]  # a later item of the food thread
    with torch.no_grad():
        a, b = net.rec_logits(x, y, neg), net.rec_logits(changed, y, neg)
    torch.testing.assert_close(a[0][:4], b[0][:4], rtol=0, atol=0)
    torch.testing.assert_close(a[1][:4], b[1][:4], rtol=0, atol=0)
    assert not torch.allclose(a[0][4:], b[0][4:])


def test_score_is_mixed_plus_the_candidate_domain_thread(
    settings: Settings, slice_data: Dataset, table: np.ndarray
) -> None:
    net = _net(settings, slice_data, table)
    catalog = slice_data.catalog
    history = torch.from_numpy(
        np.asarray([catalog.encode(slice_data.split("test")[0].history)[-10:]])
    )
    with torch.no_grad():
        scores = net.user_vectors(history) @ net.item_vectors().T
        mixed = net.mixed.last_hidden(history) @ net.mixed.items.all_items().T
        for d, name in enumerate(catalog.domains):
            states, _ = net.thread_states(history, d)
            own = states[:, -1] @ net.thread(d).items.all_items().T
            items = torch.from_numpy(catalog.domain_items(name))
            torch.testing.assert_close(
                scores[0, items], (mixed + own)[0, items], rtol=1e-4, atol=1e-4
            )


def test_training_lowers_the_loss_with_every_term(
    settings: Settings, cross_data: Dataset, table: np.ndarray
) -> None:
    model = LLM4CDSRRecommender(cross_data, configure(settings, alpha=0.5), table=table)
    report = model.fit()
    first, last = report.history[0], report.history[-1]
    assert last["loss"] < first["loss"] and last["rec"] < first["rec"]
    assert "reg" in first and "profile" not in first  # no cached train profile in a fresh dir
    assert model.profile_users == 0 and first["profile_users"] == 0.0
    users = cross_data.split("valid")[:5]
    kitchen = [cross_data.catalog.ids[i - 1] for i in cross_data.catalog.domain_items("kitchen")]
    scores = model.score([u.history for u in users], [kitchen] * len(users))
    assert all(np.isfinite(s).all() and s.std() > 0 for s in scores)


def test_ablations_switch_parts_off(
    settings: Settings, slice_data: Dataset, table: np.ndarray
) -> None:
    model = LLM4CDSRRecommender(
        slice_data, configure(settings, threads=False, alpha=0.0, beta=0.0), table=table
    )
    net = model.net
    assert isinstance(net, TriThreadNet)
    assert len(net.threads) == 0 and net.profile_adapter is None
    report = model.fit()
    assert set(report.history[0]) >= {"loss", "rec"} and "reg" not in report.history[0]
    assert report.history[-1]["loss"] < report.history[0]["loss"]


def test_profile_alignment_uses_only_users_with_a_profile(
    settings: Settings, slice_data: Dataset, table: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The beta term's mechanics with stand-in user vectors (the mean text vector of each
    user's items), NOT LLM profiles: only these users' rows get the term."""
    model = LLM4CDSRRecommender(slice_data, configure(settings, beta=1.0), table=table)
    rows = train_rows(slice_data, model.net.max_len)
    assert cached_profile_vectors(slice_data, model.settings, rows.users)[1].max() == -1
    with_vector = rows.users[: len(rows.users) // 3]
    index = slice_data.catalog.index
    users = {u.user_id: u for u in slice_data.iter_split("train")}
    vectors = np.stack([table[[index[i] for i in users[u].history]].mean(0) for u in with_vector])
    found = np.full(len(rows.users), -1)
    found[: len(with_vector)] = np.arange(len(with_vector))
    per_row = torch.from_numpy(found[rows.user])
    monkeypatch.setattr(model, "_profiles", lambda _rows: (per_row, torch.from_numpy(vectors)))
    report = model.fit()
    assert report.history[0]["profile"] > 0
    assert report.history[-1]["loss"] < report.history[0]["loss"]


def test_checkpoint_round_trip(
    settings: Settings, slice_data: Dataset, table: np.ndarray, tmp_path: Path
) -> None:
    model = build_recommender("llm4cdsr", slice_data, configure(settings))
    model.fit(out=tmp_path / "ckpt")
    users = slice_data.split("test")[:8]
    cands = [list(u.items[-1:]) + list(slice_data.catalog.ids[:40]) for u in users]
    before = model.score([u.history for u in users], cands)
    loaded = build_recommender("llm4cdsr", slice_data, settings)
    loaded.load(tmp_path / "ckpt")
    for a, b in zip(before, loaded.score([u.history for u in users], cands), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
