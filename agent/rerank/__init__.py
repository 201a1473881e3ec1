"""LLM rerankers of retrieved candidates: listwise (RankGPT), verbalizer (LlamaRec), and the
shuffle-and-average position-bias control (LLMRank). See ``registry.make_reranker``."""

from agent.rerank.analysis import AnswerAnalysis, analyse_answer
from agent.rerank.base import (
    Candidate,
    HistoryItem,
    Reranker,
    RerankRequest,
    RerankResult,
    profile_text,
)
from agent.rerank.registry import RERANKERS, make_reranker

__all__ = [
    "RERANKERS",
    "AnswerAnalysis",
    "Candidate",
    "HistoryItem",
    "RerankRequest",
    "RerankResult",
    "Reranker",
    "analyse_answer",
    "make_reranker",
    "profile_text",
]
