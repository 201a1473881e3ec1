"""Running a rerank study: every row on the same users and candidates, cached and resumable.

One retriever (loaded from its checkpoint), one LLM backend (every adapter loaded), one
rerank cache shared by all rows: rows that differ only in the fusion weight share the LLM's
answers, and a killed run resumes from the last finished batch. Each finished row is written
to ``rows/<name>.json`` under a fingerprint of everything that shapes it; a second call
reuses it. A ``fusion = "valid"`` row first reranks the study's valid users (also cached),
picks the weight there (``choose_fusion_weight``) and records the curve.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset
from agent.llm.adapters import adapter_fingerprint, discover_adapters
from agent.llm.backend import LLMBackend
from agent.llm.factory import make_backend
from agent.models.base import Recommender
from agent.models.prepare import prepare_model
from agent.pipeline.profile_source import ProfileSource
from agent.pipeline.rerank_cache import RerankCache
from agent.pipeline.two_stage import TwoStageRecommender
from agent.profiles.cache import ProfileCache
from agent.rerank.fusion import choose_fusion_weight
from agent.rerank.head import WEIGHTS_FILE
from agent.rerank.ranker import MODEL_FILE, LearnedRanker
from agent.rerank.registry import LEARNED_RERANKERS, make_reranker
from eval.evaluator import EvalResult, RankingEvaluator
from eval.metrics import per_user_metrics
from eval.rerank_study.spec import RerankRow, RerankStudySpec, row_settings

log = logging.getLogger(__name__)

ROW_VERSION = 1


@dataclass
class RowResult:
    """One row's outcome on the study's users: per-user NDCG@10/HR@10, costs, fusion."""

    name: str
    fingerprint: str
    user_ids: list[str]
    domains: list[str]
    ranks: list[int]
    describe: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)  # weight, curve, valid users
    seconds: float = 0.0

    def metric(self, name: str) -> np.ndarray:
        ks = [10]
        values = per_user_metrics(np.asarray(self.ranks), ks)
        column = {"hr@10": 0, "ndcg@10": 1}[name]
        return np.asarray(values[:, column], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"version": ROW_VERSION, **self.__dict__}


def _file_sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def _learned_sha(reranker: str, settings: Settings) -> str | None:
    """The trained weights a learned row serves (its rows are redone when they change)."""
    if reranker == "head":
        return _file_sha(settings.head_dir / WEIGHTS_FILE)
    return _file_sha(settings.ranker_dir / MODEL_FILE)


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


class RerankStudy:
    """Runs ``spec``'s rows (see the module docstring); ``run()`` -> one RowResult per row."""

    def __init__(
        self,
        spec: RerankStudySpec,
        data: Dataset,
        root: Path,
        *,
        config_file: Path | None = None,
        base_set: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.data = data
        self.root = root
        self.config_file = config_file
        self.base_set = list(base_set)
        self.settings = row_settings(spec, RerankRow(name="base"), config_file, self.base_set)
        self._backend: LLMBackend | None = None
        self._retriever: Recommender | None = None
        self.test = RankingEvaluator(
            data, self.settings, split=spec.split, protocol="sampled-999", users=spec.users
        )
        self._valid: RankingEvaluator | None = None

    # -- shared parts, built on first use -------------------------------------------------
    @property
    def retriever(self) -> Recommender:
        if self._retriever is None:
            self._retriever = prepare_model(
                self.spec.retriever,
                self.data,
                self.settings,
                checkpoint=self.spec.retriever_checkpoint,
                train=False,
            ).model
        return self._retriever

    def backend(self, settings: Settings) -> LLMBackend:
        if self._backend is None:
            self._backend = make_backend(settings, self.spec.backend)
        return self._backend

    @property
    def valid(self) -> RankingEvaluator:
        if self._valid is None:
            self._valid = RankingEvaluator(
                self.data,
                self.settings,
                split="valid",
                protocol="sampled-999",
                users=self.spec.valid_users,
                bootstrap=0,
            )
        return self._valid

    # -- rows -------------------------------------------------------------------------
    def row_fingerprint(self, row: RerankRow, settings: Settings) -> str:
        adapters = discover_adapters(settings)
        name = row.adapter_name
        weights = adapter_fingerprint(adapters[name]) if name and name in adapters else None
        if row.reranker in LEARNED_RERANKERS:
            weights = _learned_sha(row.reranker, settings)
        return _fingerprint(
            ROW_VERSION,
            row.model_dump(),
            settings.rerank.model_dump(mode="json"),
            settings.llm.model,
            weights,
            self.spec.model_dump(mode="json", exclude={"rows", "description"}),
            [u.user_id for u in self.test.users],
        )

    def _system(
        self, row: RerankRow, settings: Settings, cache: RerankCache, profiles: ProfileCache
    ) -> TwoStageRecommender:
        assert row.reranker is not None
        if row.reranker in LEARNED_RERANKERS:
            learned = make_reranker(row.reranker, None, settings, data=self.data)
            return TwoStageRecommender(
                self.retriever,
                learned,
                # the list length it was trained on (its card), which may exceed the study's
                top_n=learned.top_n or settings.rerank.top_n,
                cache=None,
                history_items=LearnedRanker.history_items,
                describe={"weights": _learned_sha(row.reranker, settings)},
            )
        backend = self.backend(settings)
        name = row.adapter_name
        if name and name not in discover_adapters(settings):
            raise ValueError(f"row {row.name!r}: adapter {name!r} not found (train it first)")
        reranker = make_reranker(row.reranker, backend, settings)
        source = (
            ProfileSource(backend, self.data, settings, profiles)
            if settings.rerank.use_profile
            else None
        )
        weights = adapter_fingerprint(discover_adapters(settings)[name]) if name else None
        return TwoStageRecommender(
            self.retriever,
            reranker,
            top_n=settings.rerank.top_n,
            profiles=source,
            cache=cache,
            history_items=max(settings.rerank.history_items, getattr(reranker, "history_items", 0)),
            describe={"adapter_weights": weights},
        )

    def _choose_weight(self, row: RerankRow, system: TwoStageRecommender) -> dict[str, Any]:
        """Rerank the valid users (cached), pick the fusion weight on them."""
        system.requests.clear()
        system.results.clear()
        self.valid(system, name=f"{row.name}@valid", batch_users=system.settings.rerank.batch_users)
        targets = [u.target or "" for u in self.valid.users]
        weight, curve = choose_fusion_weight(
            list(zip(system.requests, system.results, strict=True)), targets
        )
        log.info("%s: fusion weight %.1f chosen on %d valid users", row.name, weight, len(targets))
        system.requests.clear()
        system.results.clear()
        return {"weight": weight, "valid_curve": curve, "valid_users": len(targets)}

    def run_row(self, row: RerankRow, cache: RerankCache, profiles: ProfileCache) -> RowResult:
        settings = row_settings(self.spec, row, self.config_file, self.base_set)
        fingerprint = self.row_fingerprint(row, settings)
        path = self.root / "rows" / f"{row.name}.json"
        if path.is_file():
            body = json.loads(path.read_text(encoding="utf-8"))
            if body.get("fingerprint") == fingerprint:
                log.info("%s: reusing %s", row.name, path)
                body.pop("version", None)
                return RowResult(**body)
        started = time.perf_counter()
        model: Recommender
        fusion: dict[str, Any] = {}
        stats: dict[str, Any] = {}
        if row.reranker is None:
            model = self.retriever
            describe: dict[str, Any] = {"retriever": self.spec.retriever}
            result = self.test(model, name=row.name)
        else:
            system = self._system(row, settings, cache, profiles)
            if row.fusion == "valid":
                fusion = self._choose_weight(row, system)
                system.fusion_weight = float(fusion["weight"])
            elif isinstance(row.fusion, float):
                system.fusion_weight = row.fusion
                fusion = {"weight": row.fusion}
            system.stats = type(system.stats)()
            result = self.test(system, name=row.name, batch_users=settings.rerank.batch_users)
            stats = system.stats.as_dict()
            describe = system.describe()
        out = _row_result(row.name, fingerprint, result, describe, stats, fusion)
        out.seconds = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out.to_dict(), indent=1, default=str), encoding="utf-8")
        tmp.replace(path)
        return out

    def run(self, only: Sequence[str] = ()) -> list[RowResult]:
        rows = [r for r in self.spec.rows if not only or r.name in only]
        with (
            RerankCache(self.settings.work_dir / "rerank") as cache,
            ProfileCache(self.settings.profile_cache_dir) as profiles,
        ):
            results = []
            try:
                for row in rows:
                    log.info("rerank study %s: row %s", self.spec.name, row.name)
                    results.append(self.run_row(row, cache, profiles))
            finally:
                if self._backend is not None:
                    import asyncio

                    asyncio.run(self._backend.aclose())
        return results


def _row_result(
    name: str,
    fingerprint: str,
    result: EvalResult,
    describe: dict[str, Any],
    stats: dict[str, Any],
    fusion: dict[str, Any],
) -> RowResult:
    return RowResult(
        name=name,
        fingerprint=fingerprint,
        user_ids=list(result.user_ids),
        domains=list(result.domains),
        ranks=[int(r) for r in result.ranks],
        describe=describe,
        stats=stats,
        fusion=fusion,
    )


def run_study(
    file: Path,
    *,
    config_file: Path | None = None,
    base_set: Sequence[str] = (),
    only: Sequence[str] = (),
) -> tuple[Path, list[RowResult]]:
    """Load ``file``, run its rows (or ``only`` those), write the report; -> (study.md, rows)."""
    from agent.config import load_settings
    from agent.data.loader import load_dataset
    from eval.rerank_study.report import write_report
    from eval.rerank_study.spec import RerankStudyError, load_rerank_study
    from eval.runinfo import run_info
    from eval.slices import user_slices

    spec = load_rerank_study(file)
    unknown = [n for n in only if n not in {r.name for r in spec.rows}]
    if unknown:
        raise RerankStudyError(f"{file}: no row named {', '.join(unknown)}")
    settings = load_settings(config_file, set_items=list(base_set))
    study = RerankStudy(
        spec,
        load_dataset(settings.data),
        settings.work_dir / "rerank-studies" / spec.name,
        config_file=config_file,
        base_set=base_set,
    )
    results = study.run(only)
    slices = user_slices(study.data, study.test.users)
    path = write_report(
        study.root, spec, results, {"run": run_info(), "file": str(file)}, slices=slices
    )
    return path, results
