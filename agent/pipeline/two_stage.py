"""The two-stage system as a ``Recommender``: retriever scores, its top N reranked by the LLM.

Because it serves the same ``score(histories, candidates)`` contract as every model, the
evaluation harness, ``recbridge score`` and outside evaluators see one recommender: the top N
of the retriever's ranking are reordered by the reranker and placed above the rest, which keeps
the retriever's order (and scores) below them.

Profiles come from the profile cache (computed on a miss); reranked lists go to a cache as each
batch finishes, so an interrupted evaluation resumes without repeating LLM work.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender
from agent.pipeline.profile_source import ProfileSource, history_user
from agent.pipeline.rerank_cache import RerankCache, rerank_cache_key
from agent.pipeline.retrieve import top_n
from agent.rerank.analysis import AnswerAnalysis
from agent.rerank.base import Reranker, RerankRequest, RerankResult, profile_text
from agent.rerank.fusion import fuse

log = logging.getLogger(__name__)


@dataclass
class TwoStageStats:
    """What the reranking cost and how its answers went, over every user scored so far."""

    users: int = 0
    cached: int = 0  # lists taken from the rerank cache (a resumed run)
    fallbacks: int = 0  # users left in retrieval order (LLM error or no usable answer)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rerank_s: float = 0.0  # per-user wall shares of the rerank batches (cached ones included)
    profile_s: float = 0.0  # wall time spent profiling users not in the profile cache
    profiled: int = 0  # users profiled now (not cached)
    no_profile: int = 0  # users reranked without a profile (profiling failed)
    analysis: AnswerAnalysis = field(default_factory=AnswerAnalysis)

    def add(self, result: RerankResult, cached: bool) -> None:
        self.users += 1
        self.cached += cached
        self.fallbacks += result.fallback
        self.llm_calls += result.llm_calls
        self.prompt_tokens += result.prompt_tokens
        self.completion_tokens += result.completion_tokens
        self.rerank_s += result.wall_s
        self.analysis = self.analysis + result.analysis

    def as_dict(self) -> dict[str, Any]:
        n = max(1, self.users)
        return {
            "users": self.users,
            "cached": self.cached,
            "fallbacks": self.fallbacks,
            "fallback_rate": self.fallbacks / n,
            "rerank_s_per_user": self.rerank_s / n,
            "profile_s_per_user": self.profile_s / max(1, self.profiled),
            "profiled_now": self.profiled,
            "no_profile": self.no_profile,
            "llm_calls_per_user": self.llm_calls / n,
            "tokens_per_user": (self.prompt_tokens + self.completion_tokens) / n,
            "analysis": self.analysis.to_dict(),
        }


def _history_seed(seed: int, history: Sequence[str]) -> list[int]:
    digest = hashlib.sha256("\n".join(history).encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


class TwoStageRecommender(Recommender):
    """``retriever`` ranks, ``reranker`` reorders its top ``top_n`` (see the module docstring)."""

    name: ClassVar[str] = "two-stage"

    def __init__(
        self,
        retriever: Recommender,
        reranker: Reranker,
        *,
        top_n: int,
        profiles: ProfileSource | None = None,
        cache: RerankCache | None = None,
        history_items: int = 10,
        fusion_weight: float | None = None,
        describe: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(retriever.data, retriever.settings)
        self.retriever = retriever
        self.reranker = reranker
        self.top_n = top_n
        self.profiles = profiles
        self.cache = cache
        self.history_items = history_items
        self.fusion_weight = fusion_weight
        self.stats = TwoStageStats()
        # Every user's request and the LLM's own list (before fusion), in scoring order.
        self.requests: list[RerankRequest] = []
        self.results: list[RerankResult] = []
        # What shapes the LLM's answers (the cache key): fusion is applied after the cache, so
        # rows that differ only in the fusion weight share one LLM pass.
        self._describe = {
            **reranker.describe(),
            **(describe or {}),
            "top_n": top_n,
            "history_items": history_items,
            "profiles": profiles is not None,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "retriever": self.retriever.name,
            **self._describe,
            "fusion_weight": self.fusion_weight,
        }

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        base = [
            np.asarray(s, dtype=np.float64) for s in self.retriever.score(histories, candidates)
        ]
        heads: list[list[int]] = []
        for history, scores in zip(histories, base, strict=True):
            rng = np.random.default_rng(_history_seed(self.settings.seed, history))
            known = scores > UNKNOWN_ITEM_SCORE
            order = top_n(np.where(known, scores, -np.inf), self.top_n, rng)
            heads.append([int(i) for i in order if known[int(i)]])
        requests, results = asyncio.run(self._rerank(histories, candidates, base, heads))
        if self.fusion_weight is not None:
            weight = self.fusion_weight
            results = [fuse(q, r, weight) for q, r in zip(requests, results, strict=True)]
        out: list[np.ndarray] = []
        for scores, cands, head, result in zip(base, candidates, heads, results, strict=True):
            final = scores.copy()
            if head:
                # Above every other candidate, in the reranked order.
                rest = np.delete(scores, head)
                ceiling = (float(rest.max()) if rest.size else 0.0) + 1.0
                position = {cands[i]: i for i in head}
                for rank, item_id in enumerate(result.ranking):
                    final[position[item_id]] = ceiling + (len(head) - rank)
            out.append(final)
        return out

    async def _rerank(
        self,
        histories: Sequence[Sequence[str]],
        candidates: Sequence[Sequence[str]],
        base: list[np.ndarray],
        heads: list[list[int]],
    ) -> tuple[list[RerankRequest], list[RerankResult]]:
        try:
            texts = await self._profile_texts(histories)
            requests = [
                RerankRequest.from_ids(
                    self.data,
                    history_user(history).user_id,
                    list(history)[-self.history_items :] if self.history_items else [],
                    [cands[i] for i in head],
                    scores=[float(scores[i]) for i in head],
                    profile=text,
                )
                for history, cands, scores, head, text in zip(
                    histories, candidates, base, heads, texts, strict=True
                )
            ]
            keys = [rerank_cache_key(self._describe, r) for r in requests]
            found = [self.cache.get(k) if self.cache is not None else None for k in keys]
            todo = [i for i, hit in enumerate(found) if hit is None]
            fresh: list[RerankResult] = []
            if todo:
                started = time.perf_counter()
                fresh = await self.reranker.arerank_batch([requests[i] for i in todo])
                log.debug("reranked %d users in %.1fs", len(todo), time.perf_counter() - started)
                if self.cache is not None:
                    self.cache.put_many([(keys[i], r) for i, r in zip(todo, fresh, strict=True)])
        finally:
            await self.reranker.aclose()  # async clients belong to this event loop
        by_pos = dict(zip(todo, fresh, strict=True))
        results: list[RerankResult] = []
        for pos, hit in enumerate(found):
            result = hit if hit is not None else by_pos[pos]
            self.stats.add(result, cached=hit is not None)
            results.append(result)
        self.requests.extend(requests)
        self.results.extend(results)
        # Progress that also reaches a log file (the evaluator's bar shows only on a terminal).
        log.info(
            "%s: %d users reranked (%d from cache, %d fallbacks so far)",
            self._describe["reranker"],
            self.stats.users,
            self.stats.cached,
            self.stats.fallbacks,
        )
        return requests, results

    async def _profile_texts(self, histories: Sequence[Sequence[str]]) -> list[str | None]:
        if self.profiles is None:
            return [None] * len(histories)
        trees, stats = await self.profiles.atrees([history_user(h) for h in histories])
        fresh = stats.ok - stats.cached
        if fresh:
            self.stats.profile_s += stats.seconds
            self.stats.profiled += fresh
        self.stats.no_profile += sum(t is None for t in trees)
        return [profile_text(t.profile) if t is not None else None for t in trees]
