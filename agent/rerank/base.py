"""What every reranker takes and returns, and the interface they share.

A request is one user: recent history (most recent last), an optional profile text, and the
retrieved candidates in retrieval order. A result is a permutation of ALL candidates (never a
subset: the evaluation ranks every candidate), per-item scores, the answer analysis and the
cost. Rerankers batch over users: one ``agenerate_batch`` per round, so the backend's
concurrency limit and vLLM's continuous batching work across users. A request that fails for
good (``LLMError`` after the backend's retries) puts that user back in retrieval order,
flagged and counted; the other users are not affected.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.data.schema import Dataset
from agent.items.text import cut
from agent.llm.backend import LLMBackend
from agent.profiles.schema import Profile
from agent.rerank.analysis import AnswerAnalysis

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One retrieved item; ``rank`` is its 0-based retrieval rank, ``score`` the retriever's."""

    item_id: str
    title: str
    domain: str = ""
    score: float = 0.0
    rank: int = 0


@dataclass(frozen=True, slots=True)
class HistoryItem:
    item_id: str
    title: str
    domain: str = ""


@dataclass(frozen=True)
class RerankRequest:
    """One user's reranking job. ``candidates`` are in the order the reranker is to treat as
    the retrieval order (the retriever's; bootstrap shuffles it on purpose)."""

    user_id: str
    candidates: tuple[Candidate, ...]
    history: tuple[HistoryItem, ...] = ()  # most recent last
    profile: str | None = None  # profile text for the prompt (see ``profile_text``)
    domain: str = ""  # the candidates' domain (the target's)

    def __post_init__(self) -> None:
        ids = [c.item_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"user {self.user_id}: duplicate candidate ids")

    @property
    def candidate_ids(self) -> list[str]:
        return [c.item_id for c in self.candidates]

    @property
    def history_ids(self) -> list[str]:
        return [h.item_id for h in self.history]

    @classmethod
    def from_ids(
        cls,
        data: Dataset,
        user_id: str,
        history: Sequence[str],
        candidates: Sequence[str],
        *,
        scores: Sequence[float] | None = None,
        profile: str | None = None,
        domain: str | None = None,
    ) -> RerankRequest:
        """A request from item ids of ``data`` (candidates in retrieval order)."""
        cands = tuple(
            Candidate(
                item_id=iid,
                title=data.items[iid].title,
                domain=data.items[iid].domain,
                score=float(scores[pos]) if scores is not None else 0.0,
                rank=pos,
            )
            for pos, iid in enumerate(candidates)
        )
        hist = tuple(
            HistoryItem(item_id=iid, title=data.items[iid].title, domain=data.items[iid].domain)
            for iid in history
            if iid in data.items
        )
        dom = domain if domain is not None else (cands[0].domain if cands else "")
        return cls(user_id=user_id, candidates=cands, history=hist, profile=profile, domain=dom)


def profile_text(profile: Profile, max_chars: int = 400) -> str:
    """The profile as one short paragraph for a prompt: summary, then likes and dislikes."""
    parts = [profile.summary.strip().rstrip(".") + "."]
    if profile.preferences:
        parts.append("Likes: " + "; ".join(profile.preferences) + ".")
    if profile.dislikes:
        parts.append("Dislikes: " + "; ".join(profile.dislikes) + ".")
    return cut(" ".join(parts), max_chars)


class RerankResult(BaseModel):
    """One user's reranked list: a permutation of all candidates, best first."""

    # -inf scores (verbalizer labels outside the top-k) survive a JSON round trip.
    model_config = ConfigDict(ser_json_inf_nan="constants")

    user_id: str
    reranker: str
    ranking: list[str]  # every candidate id exactly once, best first
    scores: dict[str, float]  # the reranker's own score per candidate, higher is better
    reason: str | None = None
    analysis: AnswerAnalysis = Field(default_factory=AnswerAnalysis)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    latency_s: float = 0.0  # sum of this user's LLM request latencies
    wall_s: float = 0.0  # this user's share of the batch's wall time
    raw_answers: list[str] = Field(default_factory=list)  # the LLM texts, window by window
    fallback: bool = False  # the ranking is the retrieval order (LLM error or no usable answer)
    error: str | None = None  # why, when it fell back

    def position_scores(self) -> dict[str, float]:
        """Scores that follow ``ranking`` strictly (n for the first .. 1 for the last)."""
        n = len(self.ranking)
        return {iid: float(n - pos) for pos, iid in enumerate(self.ranking)}


def fallback_result(
    request: RerankRequest, reranker: str, error: str, analysis: AnswerAnalysis | None = None
) -> RerankResult:
    """Retrieval order for one user, flagged; ``analysis`` keeps what was counted so far."""
    counts = analysis if analysis is not None else AnswerAnalysis()
    counts.fallbacks = 1
    ids = request.candidate_ids
    n = len(ids)
    return RerankResult(
        user_id=request.user_id,
        reranker=reranker,
        ranking=ids,
        scores={iid: float(n - pos) for pos, iid in enumerate(ids)},
        analysis=counts,
        fallback=True,
        error=error,
    )


@dataclass
class Usage:
    """LLM cost of one user, summed over its requests."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    latency_s: float = 0.0

    def add(self, prompt_tokens: int, completion_tokens: int, latency_s: float) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.llm_calls += 1
        self.latency_s += latency_s


class Reranker(ABC):
    """Reorders each user's candidates with the LLM. Implement ``arerank_batch``."""

    name: str = "base"
    # The list length a trained second stage learned on (it reorders that many); None: the
    # caller's rerank.top_n.
    top_n: int | None = None

    def __init__(self, backend: LLMBackend | None) -> None:
        self._backend = backend

    @property
    def backend(self) -> LLMBackend:
        """The LLM this reranker asks (a learned ranker without LLM calls has none)."""
        if self._backend is None:
            raise RuntimeError(f"the {self.name} reranker has no LLM backend")
        return self._backend

    async def aclose(self) -> None:
        """Close the backend's async clients (they belong to the running event loop)."""
        if self._backend is not None:
            await self._backend.aclose()

    @abstractmethod
    async def arerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        """One result per request, in order; never raises for one user's LLM failure."""

    async def arerank(self, request: RerankRequest) -> RerankResult:
        return (await self.arerank_batch([request]))[0]

    def rerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        """The sync form: its own event loop, the backend's clients closed after."""

        async def run() -> list[RerankResult]:
            try:
                return await self.arerank_batch(requests)
            finally:
                # Async HTTP clients belong to the loop that made them; this loop ends here.
                await self.aclose()

        return asyncio.run(run())

    def rerank(self, request: RerankRequest) -> RerankResult:
        return self.rerank_batch([request])[0]

    def describe(self) -> dict[str, Any]:
        """What shaped the rankings, for reports (name, model, adapter, parameters)."""
        return {"reranker": self.name, "backend": self.backend.name, "model": self.backend.model}
