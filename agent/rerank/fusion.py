"""Score fusion: the retriever's score and the LLM's, mixed per candidate list.

Both scores live on their own scales (SASRec dot products; label log-probabilities, or list
positions for a listwise answer), so each is min-max normalised over the user's list first:

    final = w * retriever_norm + (1 - w) * llm_norm

``w = 0`` is the LLM's order, ``w = 1`` the retriever's. A verbalizer label outside the
returned top-k has no LLM score (``-inf``): it gets the list's lowest LLM value, so its place
is decided by the retriever part. A user who fell back (LLM error) keeps the retrieval order.
Ties keep the retrieval order. The weight is chosen on valid users only
(``choose_fusion_weight``) and recorded with the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.rerank.base import RerankRequest, RerankResult

# Grid the weight is chosen from (0 = pure LLM, 1 = pure retriever).
WEIGHT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def _minmax(values: Sequence[float]) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return [0.0] * len(values)
    low, high = min(finite), max(finite)
    span = high - low
    return [((v if math.isfinite(v) else low) - low) / span if span > 0 else 0.0 for v in values]


def llm_scores(result: RerankResult) -> dict[str, float]:
    """The LLM's own score per candidate: verbalizer logprobs as they are; a listwise
    answer's positions (n for the first .. 1 for the last)."""
    if result.reranker == "verbalizer" and result.scores and not result.fallback:
        return dict(result.scores)
    return result.position_scores()


def fuse(request: RerankRequest, result: RerankResult, weight: float) -> RerankResult:
    """``result`` reordered by the fused score; ``scores`` become the fused scores."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    ids = request.candidate_ids
    if result.fallback or not ids:
        return result
    llm = llm_scores(result)
    retriever = _minmax([c.score for c in request.candidates])
    model = _minmax([llm.get(i, -math.inf) for i in ids])
    fused = {
        iid: weight * r + (1.0 - weight) * m
        for iid, r, m in zip(ids, retriever, model, strict=True)
    }
    position = {iid: pos for pos, iid in enumerate(ids)}
    ranking = sorted(ids, key=lambda i: (-fused[i], position[i]))
    return result.model_copy(update={"ranking": ranking, "scores": fused})


def ndcg_at(ranking: Sequence[str], target: str, k: int = 10) -> float:
    """NDCG@k of one held-out target in a ranked list (0 when it is not in the top k)."""
    for pos, iid in enumerate(ranking[:k]):
        if iid == target:
            return 1.0 / math.log2(pos + 2)
    return 0.0


def choose_fusion_weight(
    pairs: Sequence[tuple[RerankRequest, RerankResult]],
    targets: Sequence[str],
    grid: Sequence[float] = WEIGHT_GRID,
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """The grid weight with the best mean NDCG@k of ``targets`` over the lists (valid users
    only!); ties go to the smaller weight (more LLM). Returns (weight, mean NDCG per weight).

    Users whose target is not among their candidates score 0 at every weight; they stay in the
    mean, so the curve is on the same scale as the full evaluation.
    """
    if not pairs:
        raise ValueError("no reranked lists to choose a fusion weight on")
    curve: dict[float, float] = {}
    for w in grid:
        total = sum(
            ndcg_at(fuse(req, res, w).ranking, target, k)
            for (req, res), target in zip(pairs, targets, strict=True)
        )
        curve[w] = total / len(pairs)
    best = max(grid, key=lambda w: (curve[w], -w))
    return best, curve
