"""The correction head: the offset loss on hand-made logits, a zero head that returns the
retriever's order, the temperature fit, LLM columns that agree between the groups and the
serving path, and a saved head that serves a permutation."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.data.schema import Dataset, Item, UserSequence
from agent.rerank.base import RerankRequest
from agent.rerank.features import BASE_FEATURES, LLM_FEATURES, FeatureBuilder, ItemStats
from agent.rerank.head import (
    CorrectionHead,
    HeadCard,
    HeadError,
    HeadReranker,
    fit_tau,
    offset_logits,
    offset_loss,
    read_head,
    save_head,
    user_states,
)
from agent.rerank.ranker import make_groups


def test_offset_loss_on_hand_made_logits() -> None:
    scores = torch.tensor([[2.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    zero = torch.zeros(1, 3)
    # softmax([2, 0, 0]) of the first: e^2 / (e^2 + 2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert float(offset_loss(scores, 1.0, zero, labels)) == pytest.approx(expected, rel=1e-6)
    # tau scales the offset: scores / 2 = [1, 0, 0]
    expected_tau = -math.log(math.e / (math.e + 2))
    assert float(offset_loss(scores, 2.0, zero, labels)) == pytest.approx(expected_tau, rel=1e-6)
    # a correction that cancels the offset leaves a uniform list: ln 3
    cancel = torch.tensor([[-2.0, 0.0, 0.0]])
    assert float(offset_loss(scores, 1.0, cancel, labels)) == pytest.approx(math.log(3), rel=1e-6)
    # the label on the second: the loss grows with its deficit
    second = torch.tensor([[0.0, 1.0, 0.0]])
    assert float(offset_loss(scores, 1.0, zero, second)) > expected


def test_zero_head_returns_the_retriever_order() -> None:
    torch.manual_seed(0)
    head = CorrectionHead(state_dim=6, feature_dim=4)
    user = torch.randn(2, 6)
    items = torch.randn(2, 5, 6)
    feats = torch.randn(2, 5, 4)
    correction = head(user, items, feats)
    assert torch.equal(correction, torch.zeros(2, 5))
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [0.1, 0.9, 0.5, 0.3, 0.7]])
    logits = offset_logits(scores, 0.7, correction)
    assert torch.equal(logits.argsort(dim=-1, descending=True), scores.argsort(-1, descending=True))
    # one step of training moves it away from zero
    loss = offset_loss(scores, 0.7, head(user, items, feats), torch.eye(5)[[4, 0]])
    loss.backward()  # type: ignore[no-untyped-call]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_tau_fit_prefers_the_calibrated_temperature() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4000, 10)) * 3.0
    # labels drawn from softmax(scores / 3): the fitted tau should land near 3
    probs = np.exp(scores / 3.0)
    probs /= probs.sum(1, keepdims=True)
    picks = np.asarray([rng.choice(10, p=p) for p in probs])
    labels = np.eye(10)[picks]
    assert 2.4 < fit_tau(scores, labels) < 3.7


def _toy() -> tuple[Dataset, np.ndarray, np.ndarray]:
    items = {f"f{i}": Item(f"f{i}", "food", f"food {i}") for i in range(6)}
    data = Dataset(
        "toy",
        items,
        [
            UserSequence("a", "train", ("f0", "f1", "f2")),
            UserSequence("b", "train", ("f1", "f3", "f4")),
        ],
    )
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(7, 5)).astype(np.float32)
    states = rng.normal(size=(7, 8)).astype(np.float32)
    emb[0] = states[0] = 0
    return data, emb, states


@pytest.mark.parametrize("extra", [(), ("other",)])
def test_group_llm_columns_match_the_serving_features(extra: tuple[str, ...]) -> None:
    """Training appends the LLM columns to cached groups; serving computes them in place:
    the same values, with or without another retriever's columns between."""
    data, emb, states = _toy()
    plain = FeatureBuilder(data, ItemStats.from_train(data), emb, extra=extra)
    with_llm = FeatureBuilder(data, ItemStats.from_train(data), emb, states, extra=extra)
    scores = [[np.asarray([0.3, 0.1, 0.2])]] if extra else None
    args = (["u"], [["f0", "f1", "f2"]], [["f3", "f4", "f5"]], [[3.0, 2.0, 1.0]], ["f4"])
    appended = make_groups(plain, *args, scores).with_llm_columns(with_llm)
    direct = make_groups(with_llm, *args, scores)
    assert (
        with_llm.names[-2:] == list(LLM_FEATURES)
        and len(with_llm.names) == len(BASE_FEATURES) + 3 * len(extra) + 2
    )
    np.testing.assert_allclose(appended.features, direct.features, rtol=1e-6)


def test_user_state_weights_recent_items_more() -> None:
    states = np.zeros((4, 2), dtype=np.float32)
    states[1] = [1, 0]
    states[2] = [0, 1]
    out = user_states(states, [np.asarray([1, 2]), np.asarray([], dtype=np.int64)])
    assert out[0, 1] > out[0, 0] > 0  # item 2 is the most recent
    assert not out[1].any()


def test_saved_head_serves_a_permutation(tmp_path: Path) -> None:
    data, emb, states = _toy()
    builder = FeatureBuilder(data, ItemStats.from_train(data), emb, states)
    head = CorrectionHead(states.shape[1], len(builder.names))
    width = len(builder.names)
    card = HeadCard(
        features=builder.names,
        llm_states="smollm2",
        tau=1.0,
        mean=[0.0] * width,
        std=[1.0] * width,
        config=head.config,
        top_n=3,
        retriever="x",
    )
    folder = save_head(tmp_path / "h", head, card)
    loaded, loaded_card = read_head(folder)
    reranker = HeadReranker(None, builder, states, loaded, loaded_card, folder=folder)
    request = RerankRequest.from_ids(
        data, "u", ["f0", "f1"], ["f3", "f4", "f5"], scores=[0.2, 0.9, 0.5]
    )
    result = asyncio.run(reranker.arerank(request))
    # a zero head: the retriever's order by score
    assert result.ranking == ["f4", "f5", "f3"]
    with pytest.raises(HeadError, match="no trained correction head"):
        read_head(tmp_path / "missing")
