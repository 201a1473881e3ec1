"""What the service is asked (``Query``) and what it answers (pydantic: the API returns them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from agent.pipeline.recommend import Usage

__all__ = [
    "ItemHit",
    "Query",
    "RankedItem",
    "RecommendOutcome",
    "RerankHit",
    "RerankOutcome",
    "Resolved",
    "Usage",
]


@dataclass(frozen=True)
class Query:
    """One recommendation request. ``history``, ``candidates`` and ``exclude`` hold item ids or
    titles (titles are matched exactly, else to the nearest item in the index)."""

    user: str | None = None  # a user of the data: its history, unless ``history`` is given
    history: tuple[str, ...] = ()  # oldest first
    candidates: tuple[str, ...] | None = None  # None: retrieve from the domain's catalogue
    domain: str | None = None  # None: the newest history item's (or the candidates') domain
    top_k: int | None = None  # None: the service's default
    exclude: tuple[str, ...] = ()
    allow_fallback: bool = True  # LLM down: the retriever's answer (False: an error)
    pipeline: str | None = None  # None: the default pipeline
    # A variant of the pipeline's LLM reranker: another prompt template (a file in prompts/)
    # or LoRA adapter; None: the settings' (rerank.templates, rerank.adapter).
    template: str | None = None
    adapter: str | None = None
    fields: dict[str, str] = field(default_factory=dict, compare=False)  # where each came from


class Resolved(BaseModel):
    """How a reference in the request became an item: by id, exact title, or nearest title."""

    ref: str
    item_id: str
    title: str
    how: str  # "id", "title", "nearest"
    similarity: float | None = None  # for "nearest": cosine of the reference to the title


class RankedItem(BaseModel):
    item_id: str
    title: str  # the full title (HTML entities decoded)
    display_title: str  # cut at a word boundary when long (ad-copy titles)
    domain: str
    score: float  # the final score: higher is better (the rank order)
    retrieval_rank: int  # 1-based rank in the retriever's list
    retrieval_score: float
    rerank_score: float | None = None
    # Why it is here, in words: the history items it follows from and the stage that placed it.
    reason: str
    because: list[str] = Field(default_factory=list)  # the history item ids the reason names


class RecommendOutcome(BaseModel):
    user_id: str
    pipeline: str
    domain: str
    history: list[str]  # item ids, oldest first
    items: list[RankedItem]
    reason: str | None = None  # the LLM's reason for the list, when it gave one
    # Why the ranking is the retriever's although the pipeline has an LLM stage:
    # "llm_unavailable" (error or timeout) or "unusable_answer" (nothing parseable).
    fallback: str | None = None
    error: str | None = None
    profile_used: bool = False
    resolved: list[Resolved] = Field(default_factory=list)
    exclude_unmatched: list[str] = Field(default_factory=list)  # exclude refs that removed nothing
    template: str | None = None  # the LLM reranker's prompt template; None: no LLM reranker
    adapter: str | None = None  # its LoRA adapter; None: the base model
    usage: Usage = Field(default_factory=Usage)
    seconds: dict[str, float] = Field(default_factory=dict)


class RerankHit(BaseModel):
    index: int  # position in the request's documents
    relevance_score: float
    item_id: str


class RerankOutcome(BaseModel):
    pipeline: str
    results: list[RerankHit]  # best first, at most top_n
    fallback: str | None = None
    error: str | None = None
    resolved: list[Resolved] = Field(default_factory=list)  # the query's and the documents'
    template: str | None = None
    adapter: str | None = None
    usage: Usage = Field(default_factory=Usage)


class ItemHit(BaseModel):
    item_id: str
    title: str
    domain: str
    score: float  # cosine similarity of the query text to the item text
