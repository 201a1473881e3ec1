"""RankGPT's back-to-front sliding window, batched over users, for any per-window reranker.

A list longer than the window is reranked in overlapping windows from the end to the front:
``[n-w, n)``, then ``[n-w-s, n-s)`` and so on, each applied before the next is built, so good
items found late in the list move forward window by window (a bubble pass: the true top
``w - s`` items reach the top). RankGPT's loop stops before a window would start below 0,
leaving the first items unranked when ``n - w`` is not a multiple of ``s``; here the last
window is always ``[0, w)``, re-reading a few items of the one before.

Windows of one user are sequential; windows of different users are not: round k sends the
k-th window of every user still going as one ``agenerate_batch``.
"""

from __future__ import annotations

import html
import logging
import math
import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.llm.backend import LLMBackend, LLMError
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult
from agent.prompts import PromptTemplate
from agent.rerank.analysis import AnswerAnalysis
from agent.rerank.base import Candidate, Reranker, RerankRequest, RerankResult, Usage

log = logging.getLogger(__name__)


def _plain(title: str) -> str:
    """Titles are decoded when the data is read; a source that escaped twice ("&amp;amp;")
    still shows the model none. (Kept: the rerank caches key on the prompts it makes.)"""
    return html.unescape(title)


def window_spans(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` windows over ``n`` items in the order they are reranked."""
    if window < 1 or step < 1:
        raise ValueError(f"window and step must be >= 1 (window={window}, step={step})")
    if step > window:
        raise ValueError(f"step {step} > window {window} would skip items")
    if n <= window:
        return [(0, n)] if n else []
    spans: list[tuple[int, int]] = []
    end = n
    while end - window > 0:
        spans.append((end - window, end))
        end -= step
    # Full size, not a sliver (RankGPT would skip it, leaving the first items unranked).
    spans.append((0, window))
    return spans


@dataclass
class WindowAnswer:
    """One window's answer read back: a permutation of the window's ids and what was counted."""

    order: list[str]
    analysis: AnswerAnalysis
    usable: bool  # False: nothing usable, the window kept its order
    scores: dict[str, float] = field(default_factory=dict)  # the reranker's own, if it has any
    reason: str | None = None


@dataclass
class _UserState:
    request: RerankRequest
    order: list[Candidate]
    spans: list[tuple[int, int]]
    analysis: AnswerAnalysis = field(default_factory=AnswerAnalysis)
    usage: Usage = field(default_factory=Usage)
    scores: dict[str, float] = field(default_factory=dict)
    usable_windows: int = 0
    reason: str | None = None
    error: str | None = None
    texts: list[str] = field(default_factory=list)


class WindowedReranker(Reranker):
    """Renders one prompt per window, sends each round as one batch, applies the answers."""

    # Whether an answer stopped by max_tokens was cut short (not so for a one-token answer).
    counts_truncation = True

    def __init__(
        self,
        backend: LLMBackend,
        template: PromptTemplate,
        *,
        window: int = 20,
        step: int = 10,
        history_items: int = 10,
        use_profile: bool = True,
        one_shot: bool = True,
        title_chars: int = 70,
        adapter: str | None = None,
    ) -> None:
        super().__init__(backend)
        window_spans(window + 1, window, step)  # validates window and step early
        self.template = template
        self.window = window
        self.step = step
        self.history_items = history_items
        self.use_profile = use_profile
        self.one_shot = one_shot
        self.title_chars = title_chars
        self.adapter = adapter

    @abstractmethod
    def _labels(self, n: int) -> list[str]:
        """Labels for a window of ``n`` candidates, in display order."""

    @abstractmethod
    def _generation(self, messages: list[ChatMessage], labels: list[str]) -> GenerationRequest:
        """The request for one window's prompt."""

    @abstractmethod
    def _read(
        self,
        request: RerankRequest,
        window: Sequence[Candidate],
        labels: list[str],
        result: GenerationResult,
    ) -> WindowAnswer:
        """One window's answer as a permutation of the window's ids."""

    def _prompt_vars(self, request: RerankRequest, window: Sequence[Candidate]) -> dict[str, Any]:
        labels = self._labels(len(window))
        history = request.history[-self.history_items :] if self.history_items > 0 else ()
        return {
            "profile": request.profile if self.use_profile else None,
            "history": [{"item_id": h.item_id, "title": _plain(h.title)} for h in history],
            "candidates": [
                {"label": label, "title": _plain(c.title), "item_id": c.item_id}
                for label, c in zip(labels, window, strict=True)
            ],
            "labels": labels,
            "domain": request.domain or (window[0].domain if window else ""),
            "title_chars": self.title_chars,
            "example_labels": self._labels(3),
        }

    def messages(self, request: RerankRequest, window: Sequence[Candidate]) -> list[ChatMessage]:
        """The chat for one window: with ``one_shot``, the template's worked example first."""
        variables = self._prompt_vars(request, window)
        real = self.template.render(shot=False, **variables)
        if not self.one_shot:
            return real
        example = self.template.render(shot=True, **variables)
        if not example or example[-1].role != "assistant":
            return real  # a template without an example turn
        return example + [m for m in real if m.role != "system"]

    def _generation_for(
        self, request: RerankRequest, window: Sequence[Candidate]
    ) -> GenerationRequest:
        return self._generation(self.messages(request, window), self._labels(len(window)))

    async def arerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        started = time.perf_counter()
        states = [
            _UserState(
                r, list(r.candidates), window_spans(len(r.candidates), self.window, self.step)
            )
            for r in requests
        ]
        round_no = 0
        while True:
            jobs = [
                (s, s.spans[round_no])
                for s in states
                if s.error is None and round_no < len(s.spans) and len(s.order) > 1
            ]
            if not jobs:
                break
            gen = [self._generation_for(s.request, s.order[a:b]) for s, (a, b) in jobs]
            answers = await self.backend.agenerate_batch(gen)
            for (state, (a, b)), answer in zip(jobs, answers, strict=True):
                self._apply(state, a, b, answer)
            round_no += 1
        wall = (time.perf_counter() - started) / max(1, len(requests))
        return [self._result(s, wall) for s in states]

    def _apply(
        self, state: _UserState, a: int, b: int, answer: GenerationResult | LLMError
    ) -> None:
        if isinstance(answer, LLMError):
            # The user's remaining windows are skipped: it falls back as a whole.
            state.error = str(answer)
            state.analysis.llm_errors += 1
            return
        state.usage.add(answer.prompt_tokens, answer.completion_tokens, answer.latency_s)
        state.texts.append(answer.text)
        window = state.order[a:b]
        read = self._read(state.request, window, self._labels(len(window)), answer)
        counts = read.analysis
        counts.truncated += int(self.counts_truncation and answer.finish_reason == "length")
        counts.schema_enforced += int(answer.schema_enforced)
        state.analysis = state.analysis + counts
        if not read.usable:
            return
        by_id = {c.item_id: c for c in window}
        if sorted(read.order) != sorted(by_id):
            raise AssertionError(f"{self.name}: window answer is not a permutation")  # a bug
        state.order[a:b] = [by_id[i] for i in read.order]
        state.scores.update(read.scores)
        state.usable_windows += 1
        state.reason = read.reason or state.reason

    def _result(self, state: _UserState, wall_s: float) -> RerankResult:
        req = state.request
        ids = req.candidate_ids
        fallback = state.error is not None or (state.usable_windows == 0 and len(ids) > 1)
        if state.error is not None:
            log.warning("%s: user %s falls back to retrieval order", self.name, req.user_id)
        ranking = ids if fallback else [c.item_id for c in state.order]
        n = len(ranking)
        if state.scores and not fallback:
            # The reranker's own scores (verbalizer logprobs); never scored = -inf.
            scores = {iid: state.scores.get(iid, -math.inf) for iid in ranking}
        else:
            scores = {iid: float(n - pos) for pos, iid in enumerate(ranking)}
        counts = state.analysis
        counts.fallbacks = int(fallback)
        error = state.error or ("no usable answer" if fallback else None)
        return RerankResult(
            user_id=req.user_id,
            reranker=self.name,
            ranking=ranking,
            scores=scores,
            reason=None if fallback else state.reason,
            analysis=counts,
            prompt_tokens=state.usage.prompt_tokens,
            completion_tokens=state.usage.completion_tokens,
            llm_calls=state.usage.llm_calls,
            latency_s=state.usage.latency_s,
            wall_s=wall_s,
            raw_answers=state.texts,
            fallback=fallback,
            error=error,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "adapter": self.adapter,
            "template": self.template.ref.model_dump(),
            "window": self.window,
            "step": self.step,
            "history_items": self.history_items,
            "use_profile": self.use_profile,
            "one_shot": self.one_shot,
        }
