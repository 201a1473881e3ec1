"""Pipeline names: ``retriever[+reranker][+profile]``, e.g. ``sasrec-id+listwise``.

The name is what an API client puts in ``model``: which recommender retrieves, which LLM
reranker (if any) reorders its top N, and whether the user's LLM profile goes into the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.models.registry import RECOMMENDERS
from agent.rerank.registry import LEARNED_RERANKERS, RERANKERS
from agent.service.errors import NotFound

PROFILE_SUFFIX = "profile"


@dataclass(frozen=True)
class PipelineSpec:
    retriever: str
    reranker: str | None = None
    use_profile: bool = False

    @property
    def name(self) -> str:
        parts = [self.retriever]
        if self.reranker:
            parts.append(self.reranker)
        if self.use_profile:
            parts.append(PROFILE_SUFFIX)
        return "+".join(parts)

    @property
    def uses_llm(self) -> bool:
        # The learned ranker reads cached features, never the LLM.
        llm_stage = self.reranker is not None and self.reranker not in LEARNED_RERANKERS
        return llm_stage or self.use_profile

    @classmethod
    def parse(cls, name: str, param: str = "model") -> PipelineSpec:
        parts = [p.strip() for p in name.strip().split("+")]
        if not parts or parts[0] not in RECOMMENDERS:
            raise NotFound(
                f"{param} {name!r}: unknown retriever {parts[0]!r}; expected "
                f"RETRIEVER[+RERANKER][+profile] with a retriever of "
                f"{', '.join(sorted(RECOMMENDERS))}",
                param,
            )
        rest = parts[1:]
        use_profile = PROFILE_SUFFIX in rest
        rest = [p for p in rest if p != PROFILE_SUFFIX]
        if len(rest) > 1 or (rest and rest[0] not in RERANKERS):
            raise NotFound(
                f"{param} {name!r}: expected at most one reranker of {', '.join(RERANKERS)}",
                param,
            )
        return cls(parts[0], rest[0] if rest else None, use_profile)
