"""Validation NDCG@10 of an adapter through the real two-stage code.

A fixed seeded sample of valid users, their saved sampled-999 candidates, the retriever's top
N, and the reranker built by ``make_reranker`` over a ``LocalBackend`` that loads the adapter
from disk (the folder the trainer just saved): what inference does, nothing re-implemented.
No rerank cache (every check is a new adapter under the same name).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from agent.config import Settings
from agent.data.schema import Dataset
from agent.llm.local_backend import LocalBackend
from agent.models.base import Recommender
from agent.pipeline.two_stage import TwoStageRecommender
from agent.rerank.registry import make_reranker
from eval.evaluator import RankingEvaluator
from finetune.render import prompt_settings

log = logging.getLogger(__name__)

VALID_ADAPTER = "finetune-valid"  # the name the adapter under validation is loaded as


@dataclass(frozen=True)
class ValidPoint:
    step: int
    ndcg10: float
    hr10: float
    users: int
    seconds: float
    fallbacks: int


def release_memory() -> None:
    """Collect garbage and return freed heap to the OS (glibc), so a long training run's RSS
    does not grow by a model copy at every validation."""
    import ctypes
    import gc

    gc.collect()
    # Not glibc: nothing to trim; the freed memory is still reused by this process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RerankValidator:
    """``validator(step, adapter_dir)`` -> the valid NDCG@10 of the retriever + reranker."""

    def __init__(
        self, data: Dataset, settings: Settings, retriever: Recommender, kind: str
    ) -> None:
        self.settings = prompt_settings(settings)
        self.retriever = retriever
        self.kind = kind
        self.evaluator = RankingEvaluator(
            data,
            self.settings,
            split="valid",
            protocol="sampled-999",
            users=settings.finetune.valid_users,
            bootstrap=0,
            show_progress=False,
        )

    def __call__(self, step: int, adapter_dir: Path | None) -> ValidPoint:
        started = time.perf_counter()
        llm = self.settings.llm
        adapters = {VALID_ADAPTER: adapter_dir} if adapter_dir is not None else {}
        backend = LocalBackend(
            self.settings.llm_model_dir,
            llm.model,
            adapters=adapters,
            threads=llm.threads,
            dtype=llm.local_dtype,
            timeout_s=llm.timeout_s,
            concurrency=llm.concurrency,
        )
        rerank = self.settings.rerank.model_copy(
            update={"adapter": VALID_ADAPTER if adapter_dir is not None else None}
        )
        reranker = make_reranker(self.kind, backend, rerank)
        system = TwoStageRecommender(
            self.retriever,
            reranker,
            top_n=rerank.top_n,
            cache=None,
            history_items=rerank.history_items,
        )
        try:
            result = self.evaluator(system, name=f"valid@{step}", batch_users=llm.concurrency)
        finally:
            # The training process keeps running: hand this copy of the model back.
            fallbacks = system.stats.fallbacks
            backend.unload()
            del system, reranker
            release_memory()
        point = ValidPoint(
            step=step,
            ndcg10=float(result.primary),
            hr10=float(result.metrics["overall"]["hr@10"].mean),
            users=result.n_users,
            seconds=time.perf_counter() - started,
            fallbacks=fallbacks,
        )
        log.info(
            "valid @ step %d: NDCG@10 %.4f, HR@10 %.4f (%d users, %.0fs, %d fallbacks)",
            step,
            point.ndcg10,
            point.hr10,
            point.users,
            point.seconds,
            point.fallbacks,
        )
        return point
