"""One user end to end: history -> profile -> top-N retrieved -> reranked -> top-K.

``recommend`` works on a raw history (ids of the catalogue), so it serves known users (their
history from the data) and new ones (``recbridge recommend --history``) alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from agent.data.schema import Dataset
from agent.models.base import Recommender
from agent.pipeline.profile_source import ProfileSource, history_user
from agent.pipeline.retrieve import retrieve
from agent.profiles.models import ProfileTree
from agent.rerank.base import Reranker, RerankRequest, RerankResult, profile_text
from agent.rerank.fusion import fuse


class RecommendError(ValueError):
    """A request that cannot be served (unknown items, unknown domain); says which."""


class ListedItem(BaseModel):
    item_id: str
    title: str
    domain: str
    retrieval_rank: int  # 1-based rank in the retriever's list
    retrieval_score: float
    rerank_score: float | None = None


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
    reason: str | None = None
    fallback: bool = False  # the reranker fell back to retrieval order
    error: str | None = None
    seconds: dict[str, float] = Field(default_factory=dict)  # per stage
    rerank: RerankResult | None = None


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
    domain: str | None = None  # None: the domain of the newest history item
    top_n: int = 20  # retrieved, then reranked
    top_k: int = 10  # shown
    history_items: int = 10  # newest history titles in the rerank prompt
    seed: int = 0  # retrieval tie-breaking
    fusion_weight: float | None = None  # mix retriever and LLM scores (agent/rerank/fusion.py)


async def arecommend(
    data: Dataset,
    retriever: Recommender,
    history: Sequence[str],
    *,
    reranker: Reranker | None,
    profiles: ProfileSource | None,
    options: RecommendOptions | None = None,
) -> Recommendation:
    """The top K items of the target domain for ``history`` (see ``RecommendOptions``)."""
    opt = options or RecommendOptions()
    items = check_history(data, history)
    target_domain = opt.domain or data.items[items[-1]].domain
    if target_domain not in data.domains:
        raise RecommendError(f"unknown domain {target_domain!r}; known: {', '.join(data.domains)}")
    user = history_user(items, opt.user_id)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    tree: ProfileTree | None = None
    if profiles is not None:
        (tree,), _ = await profiles.atrees([user])
        seconds["profile"] = time.perf_counter() - started
    started = time.perf_counter()
    hits = retrieve(retriever, data, items, target_domain, opt.top_n, seed=opt.seed)
    seconds["retrieve"] = time.perf_counter() - started
    retrieved = [
        ListedItem(
            item_id=h.item_id,
            title=data.items[h.item_id].title,
            domain=target_domain,
            retrieval_rank=rank,
            retrieval_score=h.score,
        )
        for rank, h in enumerate(hits, start=1)
    ]
    result: RerankResult | None = None
    final = retrieved
    if reranker is not None and retrieved:
        started = time.perf_counter()
        request = RerankRequest.from_ids(
            data,
            user.user_id,
            items[-opt.history_items :] if opt.history_items else [],
            [h.item_id for h in hits],
            scores=[h.score for h in hits],
            profile=profile_text(tree.profile) if tree is not None else None,
            domain=target_domain,
        )
        result = await reranker.arerank(request)
        if opt.fusion_weight is not None:
            result = fuse(request, result, opt.fusion_weight)
        seconds["rerank"] = time.perf_counter() - started
        by_id = {x.item_id: x for x in retrieved}
        final = [
            by_id[i].model_copy(update={"rerank_score": result.scores.get(i)})
            for i in result.ranking
        ]
    return Recommendation(
        user_id=user.user_id,
        domain=target_domain,
        history=items,
        retriever=retriever.name,
        reranker=reranker.name if reranker is not None else None,
        profile=tree,
        retrieved=retrieved,
        items=final[: opt.top_k],
        reason=result.reason if result is not None else None,
        fallback=result.fallback if result is not None else False,
        error=result.error if result is not None else None,
        seconds=seconds,
        rerank=result,
    )


def recommend(
    data: Dataset,
    retriever: Recommender,
    history: Sequence[str],
    *,
    reranker: Reranker | None,
    profiles: ProfileSource | None,
    options: RecommendOptions | None = None,
) -> Recommendation:
    """The sync form (its own event loop; the LLM clients are closed after)."""

    async def run() -> Recommendation:
        try:
            return await arecommend(
                data,
                retriever,
                history,
                reranker=reranker,
                profiles=profiles,
                options=options,
            )
        finally:
            if reranker is not None:
                await reranker.backend.aclose()
            elif profiles is not None:
                await profiles.backend.aclose()

    return asyncio.run(run())
