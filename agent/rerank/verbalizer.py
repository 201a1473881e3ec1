"""Verbalizer (logit) reranking after LlamaRec: one forward pass, no generation, no parsing.

Candidates are labelled with capital letters, each ONE token at the start of the answer
(``agent/rerank/labels.py``; verified against SmolLM2's tokenizer and chat template in the
integration tests). The request asks for ``max_tokens=1`` with ``top_logprobs=20`` (vLLM's
maximum; the local backend returns the same log-softmax top-k), and the candidates are ranked
by the logprob of their label at that first position. A label's logprob sums the probability
of its token with and without a leading space ("B" and " B"), both being the same answer.

Only the top-k tokens come back, so a label outside them has no score: it gets ``-inf``, is
ranked after every scored label, in the window's given order (the retrieval order, unless a
bootstrap shuffle reordered it), and is counted as ``unscored``. A window where no label made
the top-k keeps its order; a user with no scored window falls back to retrieval order, flagged.

More candidates than labels (20): the same back-to-front sliding windows as the listwise
reranker (``window.py``), each window sorted by its labels' logprobs. Logprobs of different
windows come from different prompts and are not compared with each other: the ranking is the
windows' merge, and an item's score is its logprob in the last window it was in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from agent.llm.backend import LLMBackend
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult
from agent.prompts import PromptTemplate
from agent.rerank.analysis import AnswerAnalysis
from agent.rerank.base import Candidate, RerankRequest
from agent.rerank.labels import make_labels
from agent.rerank.window import WindowAnswer, WindowedReranker

MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs, and the OpenAI API's limit


def label_logprobs(top: Mapping[str, float], labels: Sequence[str]) -> dict[str, float]:
    """Each label's logprob from one position's top-k ({token text: logprob}); labels not
    in the top-k are left out. Variants of one label (" B", "B") are summed in probability."""
    wanted = set(labels)
    found: dict[str, list[float]] = {}
    for token, logprob in top.items():
        key = token.strip()
        if key in wanted and math.isfinite(logprob):
            found.setdefault(key, []).append(logprob)
    return {label: _logsumexp(values) for label, values in found.items()}


def _logsumexp(values: list[float]) -> float:
    peak = max(values)
    return peak + math.log(sum(math.exp(v - peak) for v in values))


def rank_by_logprobs(
    ids: Sequence[str], labels: Sequence[str], logprobs: Mapping[str, float]
) -> tuple[list[str], dict[str, float], int]:
    """(ids best first, score per id, unscored count): scored labels by logprob, ties and
    unscored ones (-inf) in the given order (Python's sort is stable)."""
    scores = {i: logprobs.get(label, -math.inf) for i, label in zip(ids, labels, strict=True)}
    order = sorted(ids, key=lambda i: -scores[i])
    unscored = sum(1 for v in scores.values() if v == -math.inf)
    return order, scores, unscored


class VerbalizerReranker(WindowedReranker):
    name = "verbalizer"
    counts_truncation = False  # max_tokens=1 always stops at "length"

    def __init__(
        self,
        backend: LLMBackend,
        template: PromptTemplate,
        *,
        window: int = MAX_TOP_LOGPROBS,
        step: int = 10,
        top_logprobs: int = MAX_TOP_LOGPROBS,
        **kw: Any,
    ) -> None:
        if not 1 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be 1..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
        # A window wider than the returned alternatives would leave labels unscored for sure.
        window = min(window, top_logprobs)
        super().__init__(backend, template, window=window, step=min(step, window), **kw)
        self.top_logprobs = top_logprobs

    def _labels(self, n: int) -> list[str]:
        return make_labels(n, "letters")

    def _generation(self, messages: list[ChatMessage], labels: list[str]) -> GenerationRequest:
        return GenerationRequest(
            messages=messages,
            max_tokens=1,
            temperature=0.0,
            top_logprobs=self.top_logprobs,
            adapter=self.adapter,
        )

    def _read(
        self,
        request: RerankRequest,
        window: Sequence[Candidate],
        labels: list[str],
        result: GenerationResult,
    ) -> WindowAnswer:
        ids = [c.item_id for c in window]
        top = result.top_logprobs[0] if result.top_logprobs else {}
        logprobs = label_logprobs(top, labels)
        order, scores, unscored = rank_by_logprobs(ids, labels, logprobs)
        counts = AnswerAnalysis(answers=1, unscored=unscored)
        if not logprobs:
            # No label among the top-k (or no logprobs at all): nothing to rank by.
            counts.wrong_format = 1
            return WindowAnswer(order=ids, analysis=counts, usable=False)
        return WindowAnswer(order=order, analysis=counts, usable=True, scores=scores)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "top_logprobs": self.top_logprobs}
