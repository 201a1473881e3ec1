"""``RecBridgeService``: the system assembled once from Settings and kept alive.

It holds the dataset, the item embeddings and the Chroma item index, the retrievers (each
prepared by the one train-or-load function, ``agent.models.prepare.prepare_model``), the LLM
backend (model prepared on first use, HTTP client open for the service's life), the rerankers,
the two-stage factory and the profile cache. Every recommendation, whatever asks for it (the
API's routes, ``recbridge recommend``, ``recbridge run``), goes through the one recommend path,
``agent.pipeline.recommend.arecommend`` (``arecommendation`` here). Its async methods serve one
request each; CPU work (scoring, embedding, Chroma) runs in worker threads so that LLM requests
of concurrent callers share the backend's batches. Components are built on first use, so a CLI
command pays only for what it needs; ``from_settings(preload=True)`` builds them all up front
(the server).

Training a retriever that has no checkpoint needs an early-stopping function from the
evaluation layer above the library: whoever allows training (the CLI, the API server) passes
``valid_fn_factory`` (``eval.evaluator.make_valid_fn``).
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import threading
import time
from collections.abc import Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from agent.config import Settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset, UserSequence, display_title
from agent.items.embedder import Embedder, make_embedder
from agent.items.embeddings import item_embeddings
from agent.items.llm_states import StatesError
from agent.items.text import PROMPTS_DIR
from agent.llm.adapters import discover_adapters
from agent.llm.backend import LLMBackend
from agent.llm.local_backend import LocalBackend
from agent.llm.model_files import ModelFilesError
from agent.llm.openai_backend import OpenAIBackend
from agent.models.base import Recommender
from agent.models.prepare import ModelNotReady, ValidFnFactory, prepare_model
from agent.models.text_knn import TextKNNRecommender
from agent.pipeline.build import TwoStageFactory, TwoStageSpec
from agent.pipeline.profile_source import ProfileSource, history_user
from agent.pipeline.reasons import Explainer, stage_text
from agent.pipeline.recommend import Recommendation, RecommendOptions, arecommend
from agent.pipeline.two_stage import TwoStageRecommender
from agent.profiles.cache import ProfileCache
from agent.profiles.schema import ProfileTree
from agent.rerank.base import Reranker
from agent.rerank.head import HeadError
from agent.rerank.ranker import RankerError
from agent.rerank.registry import LEARNED_RERANKERS, make_reranker
from agent.service.errors import BadRequest, NotFound, TooLarge, Unavailable
from agent.service.llm import BackendKind, ensure_llm_model, open_backend
from agent.service.messages import looks_like_id, split_list
from agent.service.pipelines import PipelineSpec
from agent.service.queries import (
    ItemHit,
    Query,
    RankedItem,
    RecommendOutcome,
    RerankHit,
    RerankOutcome,
    Resolved,
)
from agent.store.chroma_store import ItemIndex, make_client

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TOP_K = 10
HEALTH_TIMEOUT_S = 5.0
# One word with a digit and no list separator: an id (a user's, an item's), not a title.
_ID_WORD = re.compile(r"^(?=.*\d)[^\s;]+$")
# A reranker: its name, whether the profile goes in, its prompt template and LoRA adapter.
RerankerKey = tuple[str, bool, str | None, str | None]


def _norm_title(text: str) -> str:
    return " ".join(html.unescape(text).casefold().split())


def _check_utf8(text: str, param: str) -> None:
    """A lone surrogate (JSON's ``\\ud800`` escape) reaches no tokenizer: a 422 naming the
    field, whoever calls (the API's models refuse it first; this guards every other way in)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{param}: not valid UTF-8 text: {exc.reason}", param) from None


class RecBridgeService:
    """One long-lived RecBridge: see the module docstring. Close it (``aclose``) when done."""

    def __init__(
        self,
        settings: Settings,
        data: Dataset,
        *,
        backend: BackendKind | None = None,
        pipelines: Sequence[str] | None = None,
        train_missing: bool | None = None,
        valid_fn_factory: ValidFnFactory | None = None,
        progress: bool = False,
    ) -> None:
        self.settings = settings
        self.data = data
        self.backend_kind = backend
        self.valid_fn_factory = valid_fn_factory
        self.progress = progress  # progress bars while embedding and indexing (a CLI job)
        self.train_missing = (
            settings.serve.train_missing if train_missing is None else train_missing
        )
        names = list(pipelines if pipelines is not None else settings.serve.pipelines)
        self.pipelines: dict[str, PipelineSpec] = {}
        for name in names:
            spec = PipelineSpec.parse(name, "serve.pipelines")
            self.pipelines[spec.name] = spec
        default = settings.serve.default_pipeline
        self.default_pipeline = (
            PipelineSpec.parse(default, "serve.default_pipeline").name
            if default
            else next(iter(self.pipelines), None)
        )
        if self.default_pipeline is not None and self.default_pipeline not in self.pipelines:
            self.pipelines[self.default_pipeline] = PipelineSpec.parse(self.default_pipeline)
        # Read once: the service serves one fixed dataset.
        self.domains: list[str] = data.domains
        self.unavailable: dict[str, str] = {}  # pipeline -> why it was dropped at start
        self._embedder: Embedder | None = None
        self._embeddings: np.ndarray | None = None
        self._index: ItemIndex | None = None
        self._titles: dict[str, str] | None = None
        self._users: dict[str, UserSequence] | None = None
        self._retrievers: dict[str, Recommender] = {}
        self._retriever_locks: dict[str, threading.Lock] = {}
        self._backend: LLMBackend | None = None
        self._rerankers: dict[RerankerKey, Reranker] = {}
        self._profile_cache: ProfileCache | None = None
        self._factory: TwoStageFactory | None = None
        self._profiles: ProfileSource | None = None
        self._explainer: Explainer | None = None
        self._build_lock = threading.Lock()

    # ----------------------------------------------------------------- building
    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        backend: BackendKind | None = None,
        pipelines: Sequence[str] | None = None,
        train_missing: bool | None = None,
        preload: bool = False,
        data: Dataset | None = None,
        valid_fn_factory: ValidFnFactory | None = None,
        progress: bool = False,
    ) -> RecBridgeService:
        """The service on ``settings``; ``preload`` builds every component now (a server);
        ``valid_fn_factory`` lets it train retrievers that have no checkpoint."""
        service = cls(
            settings,
            data if data is not None else load_dataset(settings.data),
            backend=backend,
            pipelines=pipelines,
            train_missing=train_missing,
            valid_fn_factory=valid_fn_factory,
            progress=progress,
        )
        if preload:
            service.preload()
        return service

    def preload(self) -> None:
        """Build everything a request could need: index, retrievers, the LLM (loaded)."""
        started = time.perf_counter()
        if self.settings.train.threads > 0:
            import torch

            # Retrievers score a few candidates per request: more intra-op threads only spin
            # against the event loop and the LLM on a shared CPU (train.threads, default 1).
            torch.set_num_threads(self.settings.train.threads)
        _ = self.item_index
        self._title_index()
        _ = self.explainer
        for name, spec in list(self.pipelines.items()):
            try:
                self.retriever(spec.retriever)
                if spec.reranker in LEARNED_RERANKERS:
                    self.reranker(spec.reranker, spec.use_profile)  # trained? its files read?
            except (ModelNotReady, RankerError, HeadError, StatesError) as exc:
                if name == self.default_pipeline:
                    raise
                log.warning("pipeline %s is unavailable: %s", name, exc)
                self.unavailable[name] = str(exc)
                del self.pipelines[name]
        if any(spec.uses_llm for spec in self.pipelines.values()):
            backend = self.backend
            if isinstance(backend, LocalBackend):
                backend.load()
        log.info(
            "service ready in %.1fs: %d items, pipelines %s",
            time.perf_counter() - started,
            len(self.data.catalog),
            ", ".join(self.pipelines),
        )

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = make_embedder(self.settings)
        return self._embedder

    @property
    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            self._embeddings = item_embeddings(
                self.data, self.settings, progress=self.progress, embedder=self.embedder
            )
        return self._embeddings

    @property
    def explainer(self) -> Explainer:
        """Reasons from the history (agent/pipeline/reasons.py): text vectors, train counts."""
        with self._build_lock:
            if self._explainer is None:
                self._explainer = Explainer(self.data, self.embeddings)
        return self._explainer

    @property
    def item_index(self) -> ItemIndex:
        """The Chroma item collection of this embedder, filled when incomplete."""
        with self._build_lock:
            if self._index is None:
                index = ItemIndex(make_client(self.settings), self.settings, self.embedder.model_id)
                if index.count() != len(self.data.catalog):
                    log.info("item index %s is incomplete; indexing", index.name)
                    report = index.index(self.data, self.embeddings, progress=self.progress)
                    log.info(
                        "item index %s: %d items (%d written now, %.0f items/s)",
                        index.name,
                        report.count,
                        report.upserted,
                        report.items_per_s,
                    )
                self._index = index
            return self._index

    def retriever(
        self,
        name: str,
        *,
        train: bool | None = None,
        checkpoint: Path | None = None,
        train_hint: str = ", or allow training (serve.train_missing=true / serve --train)",
    ) -> Recommender:
        """The retriever ``name``, prepared once (checkpoint, or trained if allowed and the
        service was given a ``valid_fn_factory``)."""
        if name not in self._retrievers:
            allowed = self.train_missing if train is None else train

            def prepare() -> Recommender:
                return prepare_model(
                    name,
                    self.data,
                    self.settings,
                    checkpoint=checkpoint,
                    train=allowed,
                    valid_fn_factory=self.valid_fn_factory,
                    train_hint=train_hint,
                    embeddings=self.embeddings if name == "text-knn" else None,
                ).model

            try:
                model = prepare()
            except ModelFilesError:
                # Training needed the LLM (SemaCDR's item descriptions) before its folder was
                # prepared: prepare it now, as `recbridge llm prepare` would, and go on.
                ensure_llm_model(self.settings, self.backend_kind)
                model = prepare()
            self.add_retriever(name, model)
        return self._retrievers[name]

    def add_retriever(self, name: str, model: Recommender) -> None:
        """Serve ``model`` (prepared by the caller, e.g. an evaluation run) as ``name``."""
        if isinstance(model, TextKNNRecommender):
            model._index = self.item_index  # one Chroma client for the whole service
        self._retrievers[name] = model
        self._retriever_locks[name] = threading.Lock()

    @property
    def backend(self) -> LLMBackend:
        """The LLM backend (the local model prepared on first use); kept open until aclose."""
        if self._backend is None:
            self._backend = open_backend(
                self.settings, self.backend_kind, timeout_s=self.settings.serve.llm_timeout_s
            )
        return self._backend

    def reranker(
        self, name: str, use_profile: bool, template: str | None = None, adapter: str | None = None
    ) -> Reranker:
        """The reranker ``name``, one per variant: ``template`` and ``adapter`` (checked by
        ``variant``) replace the settings' ``rerank.templates.<name>`` and ``rerank.adapter``."""
        key = (name, use_profile, *self._effective(name, template, adapter))
        if key not in self._rerankers:
            # The learned ranker asks no LLM: a +ranker pipeline never loads one.
            backend = None if name in LEARNED_RERANKERS else self.backend
            self._rerankers[key] = make_reranker(
                name,
                backend,
                self._variant_settings(name, template, adapter),
                use_profile=use_profile,
                data=self.data,
            )
        return self._rerankers[key]

    def _effective(
        self, name: str, template: str | None, adapter: str | None
    ) -> tuple[str | None, str | None]:
        """(template, adapter) a reranker ``name`` uses: the given ones, else the settings'
        (none for a learned reranker, which has no prompt)."""
        if name in LEARNED_RERANKERS:
            return None, None
        rerank = self.settings.rerank
        default: str | None = getattr(rerank.templates, name, None)
        return template or default, adapter or rerank.adapter

    def _variant_settings(self, name: str, template: str | None, adapter: str | None) -> Settings:
        rerank = self.settings.rerank
        changes: dict[str, Any] = {}
        if template:
            changes["templates"] = rerank.templates.model_copy(update={name: template})
        if adapter:
            changes["adapter"] = adapter
        if not changes:
            return self.settings
        return self.settings.model_copy(update={"rerank": rerank.model_copy(update=changes)})

    def rerank_templates(self, reranker: str | None) -> list[str]:
        """The prompt templates an LLM reranker can use: ``prompts/rerank_<name>*.j2``."""
        if reranker is None or reranker in LEARNED_RERANKERS:
            return []
        return sorted(p.name for p in PROMPTS_DIR.glob(f"rerank_{reranker}*.j2"))

    def rerank_adapters(self, reranker: str | None) -> list[str]:
        """The LoRA adapters an LLM reranker can use (llm.adapters and the trained ones)."""
        if reranker is None or reranker in LEARNED_RERANKERS:
            return []
        return sorted(discover_adapters(self.settings))

    def variant(self, spec: PipelineSpec, query: Query) -> tuple[str | None, str | None]:
        """The (template, adapter) ``query`` asks of the pipeline's LLM reranker, checked:
        a 404 naming the field for an unknown one, a 422 when there is no LLM reranker."""
        for param, value in (("template", query.template), ("adapter", query.adapter)):
            if value and (spec.reranker is None or spec.reranker in LEARNED_RERANKERS):
                raise BadRequest(
                    f"{param}: pipeline {spec.name!r} has no LLM reranker to use {value!r} "
                    "with; choose a pipeline with listwise or verbalizer",
                    param,
                )
        if spec.reranker is None:
            return None, None
        templates = self.rerank_templates(spec.reranker)
        if query.template and query.template not in templates:
            raise NotFound(
                f"template {query.template!r} is not a {spec.reranker} template; available: "
                f"{', '.join(templates)}",
                "template",
            )
        adapters = self.rerank_adapters(spec.reranker)
        if query.adapter and query.adapter not in adapters:
            raise NotFound(
                f"adapter {query.adapter!r} is unknown; known: {', '.join(adapters) or 'none'}",
                "adapter",
            )
        return query.template, query.adapter

    @property
    def profile_cache(self) -> ProfileCache:
        # Opened on first use, in the thread that uses it (sqlite connections stay in one).
        if self._profile_cache is None:
            self._profile_cache = ProfileCache(self.settings.profile_cache_dir)
        return self._profile_cache

    @property
    def profiles(self) -> ProfileSource:
        if self._profiles is None:
            embeddings = self.embeddings if self.settings.profile.clusters > 0 else None
            self._profiles = ProfileSource(
                self.backend, self.data, self.settings, self.profile_cache, embeddings=embeddings
            )
        return self._profiles

    @property
    def factory(self) -> TwoStageFactory:
        """The pipeline's two-stage factory (fusion, adapters, the rerank cache) over this
        service's LLM backend and profile cache."""
        if self._factory is None:
            embeddings = self.embeddings if self.settings.profile.clusters > 0 else None
            self._factory = TwoStageFactory(
                self.settings,
                backend=self.backend,
                embeddings=embeddings,
                profile_cache=self.profile_cache,
            )
        return self._factory

    def two_stage(
        self, retriever: Recommender, reranker: str, use_profile: bool
    ) -> TwoStageRecommender:
        """The two-stage system as a ``Recommender`` (batch scoring: ``score``)."""
        return self.factory.build(retriever, TwoStageSpec(reranker, use_profile))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine on a fresh event loop (a CLI command), then close the LLM client
        and the caches: async clients belong to the loop that made them."""

        async def main() -> T:
            try:
                return await coro
            finally:
                await self.aclose()

        return asyncio.run(main())

    async def aclose(self) -> None:
        """Close the LLM client and the caches (the service is done)."""
        if self._backend is not None:
            await self._backend.aclose()
        self.close_caches()

    def close_caches(self) -> None:
        if self._factory is not None:
            self._factory.close()
        if self._profile_cache is not None:
            self._profile_cache.close()
        self._profile_cache = None
        self._factory = None
        self._profiles = None

    # ----------------------------------------------------------------- requests
    def pipeline(self, name: str | None, param: str = "model") -> PipelineSpec:
        wanted = name or self.default_pipeline
        if wanted is None:
            raise NotFound("no pipeline configured (serve.pipelines is empty)", param)
        spec = self.pipelines.get(wanted)
        if spec is None:
            parsed = PipelineSpec.parse(wanted, param)  # a malformed name says why
            spec = self.pipelines.get(parsed.name)
        if spec is None:
            why = self.unavailable.get(wanted)
            raise NotFound(
                f"{param} {wanted!r} is not served"
                + (f" ({why})" if why else "")
                + f"; served: {', '.join(self.pipelines)}",
                param,
            )
        return spec

    def _title_index(self) -> dict[str, str]:
        if self._titles is None:
            titles: dict[str, str] = {}
            for iid, item in self.data.items.items():
                titles.setdefault(_norm_title(item.title), iid)
            self._titles = titles
        return self._titles

    def _user_index(self) -> dict[str, UserSequence]:
        if self._users is None:
            users: dict[str, UserSequence] = {}
            for split in ("train", "valid", "test"):  # later splits win: their longer history
                for user in self.data.iter_split(split):
                    users[user.user_id] = user
            self._users = users
        return self._users

    def find_user(self, user_id: str, param: str = "user") -> UserSequence:
        found = self._user_index().get(user_id)
        if found is None:
            raise NotFound(f"{param}: user {user_id!r} is not in the data", param)
        return found

    def read_query_text(self, text: str, param: str = "query") -> Query:
        """A rerank ``query`` string: a user of the data, else a history (item ids or titles
        separated by ``;`` or newlines). One id-like word (no space, a digit) that is neither
        a user nor an item is a 404: taken as a one-title history it would be a guess."""
        text = text.strip()
        if not text:
            raise BadRequest(f"{param}: empty; give a user id or a history", param)
        if text in self._user_index():
            return Query(user=text)
        if _ID_WORD.match(text) and text not in self.data.items:
            raise NotFound(
                f"{param}: no user {text!r} in the data (and no item with that id); to rank "
                f'for a history send {{"{param}": {{"history": [item ids or titles]}}}} or the '
                "items separated by ';'",
                param,
            )
        return Query(history=tuple(split_list(text)))

    def _check_size(self, refs: Sequence[str], limit: int, param: str) -> None:
        if len(refs) > limit:
            raise TooLarge(f"{param}: {len(refs)} items, at most {limit} allowed", param)

    async def aresolve(self, refs: Sequence[str], param: str) -> tuple[list[str], list[Resolved]]:
        """Item ids for ``refs``: ids as they are, titles by exact match, else the nearest
        title in the index (embedded in a worker thread, only then). An unknown id is an error
        naming its position."""
        ids: list[str | None] = []
        how: list[Resolved | None] = []
        pending: list[int] = []
        titles = self._title_index()
        for pos, raw in enumerate(refs):
            ref = raw.strip()
            if not ref:
                raise BadRequest(f"{param}[{pos}]: empty item reference", f"{param}[{pos}]")
            _check_utf8(ref, f"{param}[{pos}]")
            if ref in self.data.items:
                ids.append(ref)
                how.append(None)
            elif looks_like_id(ref):
                raise BadRequest(f"{param}[{pos}]: unknown item id {ref!r}", f"{param}[{pos}]")
            elif _norm_title(ref) in titles:
                iid = titles[_norm_title(ref)]
                ids.append(iid)
                how.append(
                    Resolved(ref=ref, item_id=iid, title=self.data.items[iid].title, how="title")
                )
            else:
                ids.append(None)
                how.append(None)
                pending.append(pos)
        if pending:
            texts = [refs[p] for p in pending]
            hits = await asyncio.to_thread(self.nearest_items, texts, 1)
            for pos, found in zip(pending, hits, strict=True):
                if not found:
                    raise BadRequest(
                        f"{param}[{pos}]: no item matches {refs[pos]!r}", f"{param}[{pos}]"
                    )
                hit = found[0]
                ids[pos] = hit.item_id
                how[pos] = Resolved(
                    ref=refs[pos],
                    item_id=hit.item_id,
                    title=hit.title,
                    how="nearest",
                    similarity=hit.score,
                )
        return [i for i in ids if i is not None], [h for h in how if h is not None]

    def nearest_items(
        self, texts: Sequence[str], k: int, domain: str | None = None
    ) -> list[list[ItemHit]]:
        """Per text, the ``k`` items whose text is nearest (cosine), over one or all domains."""
        if domain is not None and domain not in self.domains:
            raise BadRequest(
                f"domain {domain!r} is unknown; known: {', '.join(self.domains)}", "domain"
            )
        domains = [domain] if domain else self.domains
        vectors = self.embedder.embed(list(texts))
        out: list[list[ItemHit]] = []
        for vec in vectors:
            rows = np.repeat(vec[None, :], len(domains), axis=0)
            found = self.item_index.query_batch(rows, domains, k)
            hits = [
                ItemHit(
                    item_id=iid,
                    title=self.data.items[iid].title,
                    domain=self.data.items[iid].domain,
                    score=sim,
                )
                for per_domain in found
                for iid, sim in per_domain
                if iid in self.data.items
            ]
            hits.sort(key=lambda h: -h.score)
            out.append(hits[:k])
        return out

    async def asearch(self, text: str, domain: str | None, k: int) -> list[ItemHit]:
        """Semantic item search in the Chroma index."""
        if not text.strip():
            raise BadRequest("q: empty search text", "q")
        _check_utf8(text, "q")
        if k > self.settings.serve.max_top_k:
            raise BadRequest(f"k: {k} is above the limit {self.settings.serve.max_top_k}", "k")
        return (await asyncio.to_thread(self.nearest_items, [text], k, domain))[0]

    async def _history(
        self, query: Query, where: str = ""
    ) -> tuple[str, list[str], list[Resolved]]:
        """(user id, history ids, how references were read) of a query; ``where`` prefixes
        the fields errors name (``query.`` for /v1/rerank's query)."""
        serve = self.settings.serve
        self._check_size(query.history, serve.max_history, f"{where}history")
        if query.history:
            ids, resolved = await self.aresolve(query.history, f"{where}history")
            return history_user(ids, query.user).user_id, ids, resolved
        if query.user:
            user = self.find_user(query.user, f"{where}user")
            return user.user_id, list(user.history)[-serve.max_history :], []
        raise BadRequest(f"{where}history: give a user or a history", f"{where}history")

    def _domain(self, query: Query, history: Sequence[str], fallback: str | None) -> str:
        domain = (
            query.domain or fallback or (self.data.items[history[-1]].domain if history else None)
        )
        if domain is None:
            raise BadRequest("domain: cannot tell the domain; give one", "domain")
        if domain not in self.domains:
            raise BadRequest(
                f"domain: {domain!r} is unknown; known: {', '.join(self.domains)}", "domain"
            )
        return domain

    async def arecommendation(
        self,
        spec: PipelineSpec,
        history: Sequence[str],
        *,
        user_id: str | None = None,
        domain: str | None = None,
        top_k: int = DEFAULT_TOP_K,
        top_n: int | None = None,
        candidates: Sequence[str] | None = None,
        exclude: Collection[str] = (),
        template: str | None = None,
        adapter: str | None = None,
    ) -> Recommendation:
        """The one recommend path (``agent.pipeline.recommend.arecommend``) with this
        service's retriever, reranker (the ``template``/``adapter`` variant, checked by
        ``variant``), profiles and settings (``rerank.*``, fusion included). ``top_n``
        (reranked) defaults to ``rerank.top_n`` with a reranker, else ``top_k``."""
        rerank = self.settings.rerank
        retriever = self._retrievers.get(spec.retriever)
        if retriever is None:  # not preloaded: loading (or training) it blocks, off the loop
            retriever = await asyncio.to_thread(self.retriever, spec.retriever)
        reranker = (
            self.reranker(spec.reranker, spec.use_profile, template, adapter)
            if spec.reranker
            else None
        )
        if top_n is None:
            top_n = (reranker.top_n or rerank.top_n) if reranker is not None else top_k
        options = RecommendOptions(
            user_id=user_id,
            domain=domain,
            top_n=top_n,
            top_k=top_k,
            # A learned ranker reads a longer history than the LLM prompts show.
            history_items=max(rerank.history_items, getattr(reranker, "history_items", 0)),
            seed=self.settings.seed,
            fusion_weight=rerank.fusion_weight,
            candidates=candidates,
            exclude=frozenset(exclude),
        )
        return await arecommend(
            self.data,
            retriever,
            history,
            reranker=reranker,
            profiles=self.profiles if spec.use_profile else None,
            options=options,
            lock=self._retriever_locks[spec.retriever],
        )

    def _check_fallback(self, rec: Recommendation, query: Query) -> str | None:
        fallback = rec.fallback_kind()
        if fallback == "llm_unavailable" and not query.allow_fallback:
            raise Unavailable(f"the LLM is unavailable and allow_fallback is false: {rec.error}")
        return fallback

    async def arecommend(self, query: Query) -> RecommendOutcome:
        """The top K of a domain for a user or a history (optionally among given candidates)."""
        serve = self.settings.serve
        spec = self.pipeline(query.pipeline)
        top_k = query.top_k or DEFAULT_TOP_K
        if top_k > serve.max_top_k:
            raise BadRequest(f"top_k: {top_k} is above the limit {serve.max_top_k}", "top_k")
        if query.candidates is not None:
            self._check_size(query.candidates, serve.max_candidates, "candidates")
        self._check_size(query.exclude, serve.max_candidates, "exclude")
        template, adapter = self.variant(spec, query)
        user_id, history, resolved = await self._history(query)
        excluded: list[str] = []  # aligned with query.exclude
        if query.exclude:
            excluded, more = await self.aresolve(query.exclude, "exclude")
            resolved += more
        cands: list[str] | None = None
        fallback_domain: str | None = None
        if query.candidates is not None:
            cands, more = await self.aresolve(query.candidates, "candidates")
            resolved += more
            # Every given candidate stays in the answer (but the excluded ones); those the
            # retriever does not know (score UNKNOWN_ITEM_SCORE) come last, in a seeded order.
            cands = list(dict.fromkeys(cands))
            kept = [c for c in cands if c not in excluded]
            fallback_domain = self.data.items[kept[0]].domain if kept else None
        domain = self._domain(query, history, fallback_domain)
        rec = await self.arecommendation(
            spec,
            history,
            user_id=user_id,
            domain=domain,
            top_k=top_k,
            candidates=cands,
            exclude=excluded,
            template=template,
            adapter=adapter,
        )
        fallback = self._check_fallback(rec, query)
        removed = set(rec.excluded)
        unmatched = [
            ref for ref, iid in zip(query.exclude, excluded, strict=True) if iid not in removed
        ]
        reranked = rec.reranked
        n = len(rec.retrieved)
        reasons = await asyncio.to_thread(self.item_reasons, rec, spec, fallback)
        items = [
            RankedItem(
                item_id=listed.item_id,
                title=listed.title,
                display_title=display_title(listed.title),
                domain=listed.domain,
                score=float(n - pos + 1) / n if spec.reranker else listed.retrieval_score,
                retrieval_rank=listed.retrieval_rank,
                retrieval_score=listed.retrieval_score,
                rerank_score=listed.rerank_score if listed.item_id in reranked else None,
                reason=text,
                because=because,
            )
            for pos, (listed, (text, because)) in enumerate(zip(rec.items, reasons, strict=True), 1)
        ]
        return RecommendOutcome(
            user_id=rec.user_id,
            pipeline=spec.name,
            domain=rec.domain,
            history=rec.history,
            items=items,
            reason=rec.reason,
            fallback=fallback,
            error=rec.error,
            profile_used=spec.use_profile and rec.profile is not None and fallback is None,
            resolved=resolved,
            exclude_unmatched=unmatched,
            **self._variant_used(spec, template, adapter),
            usage=rec.usage,
            seconds=rec.seconds,
        )

    def _variant_used(
        self, spec: PipelineSpec, template: str | None, adapter: str | None
    ) -> dict[str, str | None]:
        """What an answer says of the reranker variant: the template and adapter used."""
        if spec.reranker is None:
            return {"template": None, "adapter": None}
        used_template, used_adapter = self._effective(spec.reranker, template, adapter)
        return {"template": used_template, "adapter": used_adapter}

    def item_reasons(
        self, rec: Recommendation, spec: PipelineSpec, fallback: str | None
    ) -> list[tuple[str, list[str]]]:
        """(reason, history ids it names) per item of ``rec.items``: the history items each
        follows from (agent/pipeline/reasons.py) and the stage that placed it."""
        explained = self.explainer.explain(rec.history, [x.item_id for x in rec.items])
        fusion = self.settings.rerank.fusion_weight
        out = []
        for pos, (listed, why) in enumerate(zip(rec.items, explained, strict=True), start=1):
            placed = stage_text(
                pos,
                listed.retrieval_rank,
                listed.retrieval_score,
                retriever=spec.retriever,
                reranker=spec.reranker,
                reranked=listed.item_id in rec.reranked,
                fallback=fallback,
                fusion=fusion,
            )
            out.append((why.text(placed), [b.item_id for b in why.because]))
        return out

    async def arerank(
        self,
        query: Query,
        documents: Sequence[str],
        top_n_docs: int | None = None,
        where: str = "query.",
    ) -> RerankOutcome:
        """Rank ``documents`` (item ids or texts) for a user or history: the retriever scores
        them all, the pipeline's LLM stage reorders the best ``rerank.top_n``. ``where``
        prefixes the user's and the history's field in errors (the rerank body's ``query``)."""
        serve = self.settings.serve
        spec = self.pipeline(query.pipeline)
        if not documents:
            raise BadRequest("documents: give at least one candidate", "documents")
        self._check_size(documents, serve.max_candidates, "documents")
        template, adapter = self.variant(spec, query)
        user_id, history, resolved = await self._history(query, where)
        ids, more = await self.aresolve(documents, "documents")
        unique = list(dict.fromkeys(ids))
        domain = self._domain(query, history, self.data.items[unique[0]].domain)
        rec = await self.arecommendation(
            spec,
            history,
            user_id=user_id,
            domain=domain,
            top_k=len(unique),
            candidates=unique,
            template=template,
            adapter=adapter,
        )
        fallback = self._check_fallback(rec, query)
        score_of = {x.item_id: x.retrieval_score for x in rec.retrieved}
        n = len(rec.items)
        position = {x.item_id: pos for pos, x in enumerate(rec.items)}
        relevance = {
            iid: (float(n - pos) / n if spec.reranker else score_of[iid])
            for iid, pos in position.items()
        }
        hits = sorted(
            (
                RerankHit(index=i, relevance_score=relevance[iid], item_id=iid)
                for i, iid in enumerate(ids)
            ),
            key=lambda h: (position[h.item_id], h.index),
        )
        limit = top_n_docs if top_n_docs is not None else len(hits)
        return RerankOutcome(
            pipeline=spec.name,
            results=hits[:limit],
            fallback=fallback,
            error=rec.error,
            resolved=resolved + more,
            **self._variant_used(spec, template, adapter),
            usage=rec.usage,
        )

    async def aprofile(self, query: Query) -> ProfileTree:
        """The user's hierarchical profile (cached), or Unavailable when the LLM failed it."""
        user_id, history, _ = await self._history(query)
        trees, stats = await self.profiles.atrees([history_user(history, user_id)])
        if trees[0] is None:
            raise Unavailable(f"could not profile {user_id}: the LLM failed ({stats.failed} user)")
        return trees[0]

    async def ahealth(self) -> dict[str, Any]:
        """Whether the store and the LLM answer; ``ok`` only when both do."""
        out: dict[str, Any] = {"pipelines": list(self.pipelines), "unavailable": self.unavailable}
        try:
            count = await asyncio.to_thread(self.item_index.count)
            out["store"] = {"ok": count == len(self.data.catalog), "items": count}
        except Exception as exc:  # any store failure is "not ok", reported, never raised
            out["store"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        needs_llm = any(spec.uses_llm for spec in self.pipelines.values())
        if not needs_llm:
            out["llm"] = {"ok": True, "used": False}
        else:
            try:
                backend = self.backend
                if isinstance(backend, OpenAIBackend):
                    async with asyncio.timeout(HEALTH_TIMEOUT_S):
                        models = await backend.alist_models()
                    out["llm"] = {
                        "ok": True,
                        "backend": "openai",
                        "url": backend.url,
                        "models": [m["id"] for m in models],
                    }
                else:
                    out["llm"] = {"ok": True, "backend": backend.name, "model": backend.model}
            except Exception as exc:  # unreachable, timed out, bad answer: all "not ok"
                out["llm"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out["ok"] = bool(out["store"]["ok"] and out["llm"]["ok"])
        return out
