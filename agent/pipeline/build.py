"""Assemble the two-stage system from settings: backend, reranker, profile and rerank caches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset
from agent.llm.adapters import adapter_fingerprint, discover_adapters
from agent.llm.backend import LLMBackend
from agent.llm.factory import make_backend
from agent.models.base import Recommender
from agent.pipeline.profile_source import ProfileSource
from agent.pipeline.rerank_cache import RerankCache
from agent.pipeline.two_stage import TwoStageRecommender
from agent.profiles.cache import ProfileCache
from agent.rerank.registry import make_reranker


@dataclass(frozen=True)
class TwoStageSpec:
    """One two-stage row: which reranker, with or without the profile in its prompt."""

    reranker: str
    use_profile: bool = True
    fusion: float | None = None  # a fusion weight for this row; None = rerank.fusion_weight
    adapter: str | None = None  # a LoRA adapter for this row; None = rerank.adapter

    def label(self, retriever: str) -> str:
        fused = "" if self.fusion is None else f"-fused{self.fusion:g}"
        lora = f"[{self.adapter}]" if self.adapter else ""
        profile = "" if self.use_profile else "-noprofile"
        return f"{retriever}+{self.reranker}{lora}{profile}{fused}"


def parse_specs(rerankers: str, *, profile: bool, ablation: bool) -> list[TwoStageSpec]:
    """``listwise,verbalizer`` -> specs; ``ablation`` adds each without the profile."""
    names = [n.strip() for n in rerankers.split(",") if n.strip()]
    variants = [profile, not profile] if ablation else [profile]
    return [TwoStageSpec(n, use) for n in names for use in variants]


class TwoStageFactory:
    """Builds two-stage recommenders that share one LLM backend and the on-disk caches.

    ``backend`` is a backend kind (a new backend is made) or an existing ``LLMBackend`` (a
    long-lived service's, shared); an existing ``profile_cache`` is shared the same way. The
    factory closes only the caches it opened itself.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backend: LLMBackend | Literal["local", "openai"] | None = None,
        embeddings: np.ndarray | None = None,
        profile_cache: ProfileCache | None = None,
    ) -> None:
        self.settings = settings
        self.backend: LLMBackend = (
            backend if isinstance(backend, LLMBackend) else make_backend(settings, backend)
        )
        self.embeddings = embeddings
        self._stack = ExitStack()
        self.profile_cache = profile_cache or self._stack.enter_context(
            ProfileCache(settings.profile_cache_dir)
        )
        self.rerank_cache = self._stack.enter_context(RerankCache(settings.work_dir / "rerank"))

    def profile_source(self, data: Dataset) -> ProfileSource:
        """Profiles through this factory's backend and cache."""
        return ProfileSource(
            self.backend, data, self.settings, self.profile_cache, embeddings=self.embeddings
        )

    def build(self, retriever: Recommender, spec: TwoStageSpec) -> TwoStageRecommender:
        settings = self.settings
        if spec.adapter is not None:
            rerank = settings.rerank.model_copy(update={"adapter": spec.adapter})
            settings = settings.model_copy(update={"rerank": rerank})
        rerank = settings.rerank
        reranker = make_reranker(
            spec.reranker,
            self.backend,
            settings,
            use_profile=spec.use_profile,
            data=retriever.data,
        )
        profiles = self.profile_source(retriever.data) if spec.use_profile else None
        return TwoStageRecommender(
            retriever,
            reranker,
            top_n=reranker.top_n or rerank.top_n,
            profiles=profiles,
            cache=self.rerank_cache,
            # The reranker cuts the history to its own (possibly the adapter's) length.
            history_items=max(rerank.history_items, getattr(reranker, "history_items", 0)),
            fusion_weight=rerank.fusion_weight if spec.fusion is None else spec.fusion,
            describe={"adapter_weights": self._adapter_sha(rerank.adapter)},
        )

    def _adapter_sha(self, name: str | None) -> str | None:
        if not name:
            return None
        path = discover_adapters(self.settings).get(name)
        return adapter_fingerprint(path) if path is not None else None

    def close(self) -> None:
        self._stack.close()


@contextmanager
def two_stage_factory(
    settings: Settings,
    *,
    backend: Literal["local", "openai"] | None = None,
    embeddings: np.ndarray | None = None,
) -> Iterator[TwoStageFactory]:
    factory = TwoStageFactory(settings, backend=backend, embeddings=embeddings)
    try:
        yield factory
    finally:
        factory.close()
