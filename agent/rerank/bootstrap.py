"""Position-bias control (the "bootstrapping" of LLMRank, Hou et al. 2024): rerank R seeded
shuffles of each candidate list and average the ranks.

LLMs favour candidates by where they stand in the prompt (small ones heavily: first labels,
"A"). Each shuffle puts every candidate at another place; the final rank is the mean rank over
the shuffles, ties broken by retrieval order. All R x users requests go to the wrapped
reranker as one batch, so the backend batches across shuffles and users alike.

A shuffle that fell back (LLM error, no usable answer) would only add the shuffled order as
noise, so it is left out of the mean; a user whose shuffles all fell back gets the retrieval
order, flagged. The analysis counts sum over all shuffles (``fallbacks`` there counts
shuffles; ``RerankResult.fallback`` is the user's).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from agent.rerank.analysis import AnswerAnalysis
from agent.rerank.base import Reranker, RerankRequest, RerankResult, fallback_result


def mean_ranks(
    candidate_ids: Sequence[str], rankings: Sequence[Sequence[str]]
) -> tuple[list[str], dict[str, float]]:
    """(ids by mean 0-based rank, best first; mean rank per id). Ties keep ``candidate_ids``
    order. Every ranking must be a permutation of ``candidate_ids``."""
    if not rankings:
        raise ValueError("mean_ranks needs at least one ranking")
    total = dict.fromkeys(candidate_ids, 0.0)
    for ranking in rankings:
        if sorted(ranking) != sorted(candidate_ids):
            raise ValueError("a ranking is not a permutation of the candidates")
        for pos, item_id in enumerate(ranking):
            total[item_id] += pos
    mean = {i: total[i] / len(rankings) for i in candidate_ids}
    order = sorted(candidate_ids, key=lambda i: mean[i])  # stable: ties by retrieval order
    return order, mean


def shuffle_request(request: RerankRequest, seed: int, shuffle_no: int) -> RerankRequest:
    """The request with its candidates in a shuffled order, the same for the same arguments."""
    cands = list(request.candidates)
    random.Random(f"{seed}:{request.user_id}:{shuffle_no}").shuffle(cands)
    return replace(request, candidates=tuple(cands))


class BootstrapReranker(Reranker):
    def __init__(self, inner: Reranker, shuffles: int, seed: int = 42) -> None:
        if shuffles < 1:
            raise ValueError(f"shuffles must be >= 1, got {shuffles}")
        super().__init__(inner.backend)
        self.inner = inner
        self.shuffles = shuffles
        self.seed = seed
        self.name = f"{inner.name}+shuffle{shuffles}"

    async def arerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        started = time.perf_counter()
        expanded = [
            shuffle_request(req, self.seed, r) for req in requests for r in range(self.shuffles)
        ]
        results = await self.inner.arerank_batch(expanded)
        wall = (time.perf_counter() - started) / max(1, len(requests))
        out = []
        for pos, req in enumerate(requests):
            subs = results[pos * self.shuffles : (pos + 1) * self.shuffles]
            out.append(self._combine(req, subs, wall))
        return out

    def _combine(
        self, request: RerankRequest, subs: Sequence[RerankResult], wall_s: float
    ) -> RerankResult:
        analysis = AnswerAnalysis.total(s.analysis for s in subs)
        usable = [s for s in subs if not s.fallback]
        if usable:
            order, mean = mean_ranks(request.candidate_ids, [s.ranking for s in usable])
            result = RerankResult(
                user_id=request.user_id,
                reranker=self.name,
                ranking=order,
                scores={i: -mean[i] for i in order},
                reason=next((s.reason for s in usable if s.reason), None),
                analysis=analysis,
            )
        else:
            errors = "; ".join(dict.fromkeys(s.error or "fallback" for s in subs))
            result = fallback_result(request, self.name, f"every shuffle fell back: {errors}")
            result.analysis = analysis
        result.prompt_tokens = sum(s.prompt_tokens for s in subs)
        result.completion_tokens = sum(s.completion_tokens for s in subs)
        result.llm_calls = sum(s.llm_calls for s in subs)
        result.latency_s = sum(s.latency_s for s in subs)
        result.wall_s = wall_s
        result.raw_answers = [text for s in subs for text in s.raw_answers]
        return result

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "shuffles": self.shuffles, "shuffle_seed": self.seed}
