"""Why a recommendation kept the retriever's order: counted LLM errors, not error texts."""

from __future__ import annotations

import pytest

from agent.pipeline.recommend import Recommendation
from agent.rerank.analysis import AnswerAnalysis
from agent.rerank.base import RerankResult


def _rec(rerank: RerankResult | None, *, profile_failed: bool = False) -> Recommendation:
    return Recommendation(
        user_id="u",
        domain="food",
        history=["a"],
        retriever="sasrec-id",
        reranker="listwise",
        retrieved=[],
        items=[],
        rerank=rerank,
        fallback=bool(rerank and rerank.fallback),
        profile_failed=profile_failed,
    )


def _result(*, fallback: bool, llm_errors: int, error: str | None) -> RerankResult:
    return RerankResult(
        user_id="u",
        reranker="listwise",
        ranking=["x", "y"],
        scores={"x": 2.0, "y": 1.0},
        analysis=AnswerAnalysis(llm_errors=llm_errors, fallbacks=int(fallback)),
        fallback=fallback,
        error=error,
    )


@pytest.mark.parametrize(
    ("fallback", "llm_errors", "error", "kind"),
    [
        (False, 0, None, None),  # the LLM's order was used
        (True, 1, "LLM timeout after 3 attempts", "llm_unavailable"),
        (True, 1, "LLM bad_request: prompt too long", "llm_unavailable"),
        # an answer with nothing parseable whose text mentions a timeout is still an answer
        (True, 0, "no usable answer: 'LLM timeout'", "unusable_answer"),
    ],
)
def test_fallback_kind_follows_the_counted_llm_errors(
    fallback: bool, llm_errors: int, error: str | None, kind: str | None
) -> None:
    assert (
        _rec(_result(fallback=fallback, llm_errors=llm_errors, error=error)).fallback_kind() == kind
    )


def test_a_failed_profile_is_an_unavailable_llm_and_no_rerank_is_no_fallback() -> None:
    assert _rec(None, profile_failed=True).fallback_kind() == "llm_unavailable"
    assert _rec(None).fallback_kind() is None
