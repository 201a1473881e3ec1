"""Score fusion on crafted lists: normalisation, extremes, unscored labels, weight choice."""

from __future__ import annotations

import math

import pytest

from agent.rerank.base import Candidate, RerankRequest, RerankResult
from agent.rerank.fusion import choose_fusion_weight, fuse, ndcg_at


def _request(scores: list[float]) -> RerankRequest:
    cands = tuple(
        Candidate(item_id=f"c{i}", title=f"t{i}", domain="food", score=s, rank=i)
        for i, s in enumerate(scores)
    )
    return RerankRequest(user_id="u", candidates=cands, domain="food")


def _verbalized(logprobs: dict[str, float]) -> RerankResult:
    ranking = sorted(logprobs, key=lambda i: -logprobs[i])
    return RerankResult(user_id="u", reranker="verbalizer", ranking=ranking, scores=logprobs)


def test_weight_zero_is_llm_order_and_one_is_retrieval_order() -> None:
    req = _request([3.0, 2.0, 1.0])
    res = _verbalized({"c0": -3.0, "c1": -0.1, "c2": -1.0})
    assert fuse(req, res, 0.0).ranking == ["c1", "c2", "c0"]
    assert fuse(req, res, 1.0).ranking == ["c0", "c1", "c2"]


def test_mixed_weight_uses_min_max_normalised_scores() -> None:
    req = _request([10.0, 9.0, 0.0])  # normalised 1.0, 0.9, 0.0
    res = _verbalized({"c0": -2.0, "c1": 0.0, "c2": -1.0})  # normalised 0.0, 1.0, 0.5
    fused = fuse(req, res, 0.5)
    assert fused.ranking == ["c1", "c0", "c2"]
    assert math.isclose(fused.scores["c1"], 0.95)
    assert math.isclose(fused.scores["c0"], 0.5)
    assert math.isclose(fused.scores["c2"], 0.25)


def test_unscored_label_gets_the_lowest_llm_value() -> None:
    req = _request([1.0, 0.5, 0.0])
    res = _verbalized({"c0": -math.inf, "c1": -1.0, "c2": -0.5})
    fused = fuse(req, res, 0.3)
    assert all(math.isfinite(v) for v in fused.scores.values())
    assert math.isclose(fused.scores["c0"], 0.3)  # retriever 1.0 x 0.3 + LLM 0


def test_listwise_positions_and_fallback_kept() -> None:
    req = _request([1.0, 0.5, 0.0])
    listwise = RerankResult(user_id="u", reranker="listwise", ranking=["c2", "c1", "c0"], scores={})
    assert fuse(req, listwise, 0.0).ranking == ["c2", "c1", "c0"]
    fell_back = listwise.model_copy(update={"fallback": True, "ranking": ["c0", "c1", "c2"]})
    assert fuse(req, fell_back, 0.0).ranking == ["c0", "c1", "c2"]
    with pytest.raises(ValueError, match="fusion weight"):
        fuse(req, listwise, 1.5)


def test_choose_weight_picks_best_valid_ndcg() -> None:
    # The retriever is right for user A; the LLM is right for users B and C.
    pairs = []
    targets = []
    for target, llm_best in (("c0", "c2"), ("c2", "c2"), ("c1", "c1")):
        req = _request([1.0, 0.5, 0.0])
        logprobs = {"c0": -3.0, "c1": -3.0, "c2": -3.0}
        logprobs[llm_best] = -0.1
        pairs.append((req, _verbalized(logprobs)))
        targets.append(target)
    weight, curve = choose_fusion_weight(pairs, targets, k=1)
    assert curve[0.0] == pytest.approx(2 / 3)
    assert curve[1.0] == pytest.approx(1 / 3)
    assert weight == 0.0
    assert ndcg_at(["a", "b"], "b", 10) == pytest.approx(1 / math.log2(3))
