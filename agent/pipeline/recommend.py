"""One user end to end: history -> top-N retrieved (or given candidates ranked) -> profile ->
reranked (scores fused when ``fusion_weight`` is set) -> top-K.

This is the one recommend path: ``recbridge recommend``, ``recbridge run``'s example user and
the service's ``/v1/recommendations``, ``/v1/rerank`` and chat answers all come through
``arecommend``. It works on a raw history (ids of the catalogue), so it serves known users
(their history from the data) and new ones (``recbridge recommend --history``) alike.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from agent.data.schema import Dataset
from agent.models.base import Recommender
from agent.pipeline.profile_source import ProfileSource, history_user
from agent.pipeline.retrieve import Retrieved, retrieve, top_n
from agent.profiles.schema import ProfileTree
from agent.rerank.base import Reranker, RerankRequest, RerankResult, profile_text
from agent.rerank.fusion import fuse

# What a result says when the profile stage met an LLM error (the reranker is then skipped:
# it would only wait for the same LLM again).
PROFILE_FAILED = "profiling failed: the LLM is unavailable"


class RecommendError(ValueError):
    """A request that cannot be served (unknown items, unknown domain); says which."""


class ListedItem(BaseModel):
    item_id: str
    title: str
    domain: str
    retrieval_rank: int  # 1-based rank in the retriever's list
    retrieval_score: float
    rerank_score: float | None = None


class Usage(BaseModel):
    """LLM cost of one request (the OpenAI ``usage`` fields, plus the number of calls)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, llm_calls: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.llm_calls += llm_calls
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens


class Recommendation(BaseModel):
    """What the pipeline did for one user, stage by stage."""

    user_id: str
    domain: str
    history: list[str]  # item ids, oldest first
    retriever: str
    reranker: str | None
    profile: ProfileTree | None = None
    retrieved: list[ListedItem]  # retrieval order
    items: list[ListedItem]  # the final top K
    # The ``exclude`` ids that removed something: listed by the retriever (or given as
    # candidates) where the answer would have had them. The others changed nothing.
    excluded: list[str] = Field(default_factory=list)
    reason: str | None = None
    fallback: bool = False  # the LLM stage fell back to retrieval order
    error: str | None = None
    seconds: dict[str, float] = Field(default_factory=dict)  # per stage
    rerank: RerankResult | None = None
    # For the service's answer, not part of the CLI's JSON: the LLM cost (profile + rerank)
    # and whether the profile stage met an LLM error.
    usage: Usage = Field(default_factory=Usage, exclude=True)
    profile_failed: bool = Field(default=False, exclude=True)

    @property
    def reranked(self) -> set[str]:
        """The items the LLM placed (none when it fell back)."""
        if self.rerank is None or self.fallback:
            return set()
        return set(self.rerank.ranking)

    def fallback_kind(self) -> str | None:
        """Why the order is the retriever's although an LLM stage ran: "llm_unavailable"
        (error or timeout) or "unusable_answer" (nothing parseable); None when it did not."""
        if self.profile_failed:
            return "llm_unavailable"
        if self.rerank is None or not self.rerank.fallback:
            return None
        # Counted where the LLMError was met (agent/rerank/window.py), cached lists included.
        down = self.rerank.analysis.llm_errors > 0
        return "llm_unavailable" if down else "unusable_answer"


def check_history(data: Dataset, history: Sequence[str]) -> list[str]:
    unknown = [i for i in history if i not in data.items]
    if unknown:
        raise RecommendError(
            f"{len(unknown)} history item id(s) not in the catalogue: {', '.join(unknown[:5])}"
        )
    if not history:
        raise RecommendError("empty history: give at least one item id")
    return list(history)


@dataclass(frozen=True)
class RecommendOptions:
    user_id: str | None = None  # None: an id made from the history
    domain: str | None = None  # None: the candidates' or the newest history item's domain
    top_n: int = 20  # reranked (and retrieved, at least)
    top_k: int = 10  # in the answer
    history_items: int = 10  # newest history titles in the rerank prompt
    seed: int = 0  # retrieval tie-breaking
    fusion_weight: float | None = None  # mix retriever and LLM scores (agent/rerank/fusion.py)
    candidates: Sequence[str] | None = None  # rank these (all kept) instead of the catalogue
    exclude: frozenset[str] = frozenset()  # never in the answer


def _check_ids(data: Dataset, ids: Sequence[str], what: str) -> None:
    unknown = [i for i in ids if i not in data.items]
    if unknown:
        raise RecommendError(
            f"{len(unknown)} {what} id(s) not in the catalogue: {', '.join(unknown[:5])}"
        )


def rank_candidates(
    retriever: Recommender, history: Sequence[str], candidates: Sequence[str], seed: int
) -> list[Retrieved]:
    """Every candidate in the retriever's order, ties in a seeded order (the same for the same
    history); those it does not know (``UNKNOWN_ITEM_SCORE``) come last."""
    if not candidates:
        return []
    scores = np.asarray(retriever.score([list(history)], [list(candidates)])[0], dtype=np.float64)
    rng = np.random.default_rng([seed, len(history)])
    order = top_n(scores, len(scores), rng)
    return [Retrieved(candidates[int(i)], float(scores[int(i)])) for i in order]


def drop_excluded(
    hits: Sequence[Retrieved], exclude: frozenset[str], n: int
) -> tuple[list[Retrieved], list[str]]:
    """The first ``n`` hits not in ``exclude``, and the excluded ids met on the way: those
    that would have taken a place among the ``n`` (the rest changed nothing)."""
    kept: list[Retrieved] = []
    removed: list[str] = []
    for hit in hits:
        if len(kept) == n:
            break
        if hit.item_id in exclude:
            removed.append(hit.item_id)
        else:
            kept.append(hit)
    return kept, removed


def _stage_one(
    data: Dataset,
    retriever: Recommender,
    history: list[str],
    domain: str,
    opt: RecommendOptions,
    lock: threading.Lock | None,
) -> tuple[list[Retrieved], list[str]]:
    """The listed items (retrieval order) and the excluded ids that removed one."""
    with lock or nullcontext():  # one scorer per model at a time (torch modules)
        if opt.candidates is not None:
            given = list(dict.fromkeys(opt.candidates))
            cands = [c for c in given if c not in opt.exclude]
            removed = [c for c in given if c in opt.exclude]
            return rank_candidates(retriever, history, cands, opt.seed), removed
        n = max(opt.top_k, opt.top_n)
        hits = retrieve(retriever, data, history, domain, n + len(opt.exclude), seed=opt.seed)
    return drop_excluded(hits, opt.exclude, n)


async def arecommend(
    data: Dataset,
    retriever: Recommender,
    history: Sequence[str],
    *,
    reranker: Reranker | None,
    profiles: ProfileSource | None,
    options: RecommendOptions | None = None,
    lock: threading.Lock | None = None,
) -> Recommendation:
    """The top K for ``history`` (see ``RecommendOptions``): the retriever's best
    ``max(top_n, top_k)`` items of the target domain (or every given candidate in its order),
    the first ``top_n`` reordered by the LLM reranker (the rest keep retrieval order).

    The retriever scores in a worker thread (under ``lock``, when given), so concurrent
    callers' LLM requests keep flowing. A profile the LLM could not make skips the reranker:
    the answer is the retrieval order, flagged (``fallback``, ``profile_failed``).
    """
    opt = options or RecommendOptions()
    items = check_history(data, history)
    if opt.candidates is not None:
        _check_ids(data, opt.candidates, "candidate")
    first = opt.candidates[0] if opt.candidates else items[-1]
    target_domain = opt.domain or data.items[first].domain
    if target_domain not in data.domains:
        raise RecommendError(f"unknown domain {target_domain!r}; known: {', '.join(data.domains)}")
    user = history_user(items, opt.user_id)
    seconds: dict[str, float] = {}
    usage = Usage()
    started = time.perf_counter()
    hits, excluded = await asyncio.to_thread(
        _stage_one, data, retriever, items, target_domain, opt, lock
    )
    seconds["retrieve"] = time.perf_counter() - started
    retrieved = [
        ListedItem(
            item_id=h.item_id,
            title=data.items[h.item_id].title,
            domain=data.items[h.item_id].domain,
            retrieval_rank=rank,
            retrieval_score=h.score,
        )
        for rank, h in enumerate(hits, start=1)
    ]
    tree: ProfileTree | None = None
    profile_failed = False
    if profiles is not None:
        started = time.perf_counter()
        (tree,), stats = await profiles.atrees([user])
        seconds["profile"] = time.perf_counter() - started
        usage.add(stats.llm_calls, stats.prompt_tokens, stats.completion_tokens)
        profile_failed = tree is None and stats.failed > 0
    result: RerankResult | None = None
    final = retrieved
    head = hits[: opt.top_n]
    if reranker is not None and head and not profile_failed:
        started = time.perf_counter()
        request = RerankRequest.from_ids(
            data,
            user.user_id,
            items[-opt.history_items :] if opt.history_items else [],
            [h.item_id for h in head],
            scores=[h.score for h in head],
            profile=profile_text(tree.profile) if tree is not None else None,
            domain=target_domain,
        )
        result = await reranker.arerank(request)
        usage.add(result.llm_calls, result.prompt_tokens, result.completion_tokens)
        if opt.fusion_weight is not None:
            result = fuse(request, result, opt.fusion_weight)
        seconds["rerank"] = time.perf_counter() - started
        by_id = {x.item_id: x for x in retrieved}
        final = [
            by_id[i].model_copy(update={"rerank_score": result.scores.get(i)})
            for i in result.ranking
        ] + retrieved[len(head) :]
    return Recommendation(
        user_id=user.user_id,
        domain=target_domain,
        history=items,
        retriever=retriever.name,
        reranker=reranker.name if reranker is not None else None,
        profile=tree,
        retrieved=retrieved,
        items=final[: opt.top_k],
        excluded=excluded,
        reason=result.reason if result is not None else None,
        fallback=profile_failed or (result.fallback if result is not None else False),
        error=PROFILE_FAILED if profile_failed else (result.error if result is not None else None),
        seconds=seconds,
        rerank=result,
        usage=usage,
        profile_failed=profile_failed,
    )
