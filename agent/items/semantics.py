"""LLM item semantics for SemaCDR: a domain-agnostic and a domain-specific description of an
item, generated once through the LLM layer and cached (../shared/METHODS.md, "SemaCDR").

Each view has a template in ``prompts/`` (``methods.semantics.agnostic_template``,
``specific_template``). A description is cached in sqlite under the sha256 of (the item's
text as embedded, the template file's sha256, the model name): edit a template or switch the
model and the old entries are simply not found. Every finished batch is committed before the
next starts, so an interrupted run resumes where it stopped; failed requests are counted and
retried on the next run. Greedy decoding: the local and the vLLM backend agree, so either can
fill the cache.

Describing all 36k items is far too slow for the 135M model on CPU; ``max_items`` caps the
items described (the most frequent in train rows first). Items without a description have no
LLM view; SemaCDR masks the missing views out of its fusion gate.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.cache import EmbeddingCache, text_key
from agent.items.embedder import Embedder, make_embedder
from agent.items.text import cut, renderer_for
from agent.llm.backend import LLMBackend, LLMError
from agent.llm.types import GenerationRequest
from agent.prompts import PromptTemplate, load_template
from agent.sqlite_store import SQLiteStore

log = logging.getLogger(__name__)

View = Literal["agnostic", "specific"]
VIEWS: tuple[View, ...] = ("agnostic", "specific")
CACHE_FILE = "semantics.sqlite3"


def semantics_key(item_text: str, template_sha256: str, model: str) -> str:
    payload = json.dumps([text_key(item_text), template_sha256, model])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class SemanticsCache(SQLiteStore):
    """``key -> description`` in one sqlite file (WAL); ``put_many`` is one transaction.
    Use it as ``with closing(SemanticsCache(dir)) as cache`` (or ``with SemanticsCache(dir)``)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            directory,
            CACHE_FILE,
            "semantics",
            "CREATE TABLE IF NOT EXISTS semantics (key TEXT PRIMARY KEY, item_id TEXT,"
            " view TEXT, model TEXT, template_sha256 TEXT, text TEXT NOT NULL, created REAL)",
            timeout=60.0,
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        sql = "SELECT key, text FROM semantics WHERE key IN ({marks})"
        return dict(self.select_in(sql, list(dict.fromkeys(keys))))

    def put_many(self, rows: Sequence[tuple[str, str, str, str, str, str]]) -> None:
        """Rows of (key, item_id, view, model, template_sha256, text)."""
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO semantics VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, now) for row in rows],
            )


@dataclass
class SemanticsReport:
    """What a generation run did, per (item, view) description."""

    requested: int = 0
    cached: int = 0  # found in the cache: no LLM call
    generated: int = 0
    failed: int = 0  # LLM error or empty answer: not cached, retried next run
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def popular_items(data: Dataset, limit: int) -> list[str]:
    """The ``limit`` items most frequent in train rows (ties: catalog order)."""
    counts = Counter(i for u in data.iter_split("train") for i in u.history)
    order = {iid: n for n, iid in enumerate(data.catalog.ids)}
    ranked = sorted(counts, key=lambda i: (-counts[i], order.get(i, len(order))))
    return [i for i in ranked if i in data.items][:limit]


class ItemSemantics:
    """The descriptions of ``data``'s items under ``settings`` and the model name ``model``."""

    def __init__(self, data: Dataset, settings: Settings, model: str | None = None) -> None:
        self.data = data
        self.settings = settings
        self.cfg = settings.methods.semantics
        self.model = model or settings.llm.model
        self.templates: dict[View, PromptTemplate] = {
            "agnostic": load_template(self.cfg.agnostic_template),
            "specific": load_template(self.cfg.specific_template),
        }
        self.cache_dir = self.cfg.cache_dir or settings.work_dir / "semantics"
        self._renderer = renderer_for(settings)
        self._texts: dict[str, str] = {}  # item id -> its embedded text (rendered once)

    def key(self, item_id: str, view: View) -> str:
        text = self._texts.get(item_id)
        if text is None:
            text = self._texts[item_id] = self._renderer.item_text(self.data.items[item_id])
        return semantics_key(text, self.templates[view].ref.sha256, self.model)

    def cached(
        self, views: Sequence[View] = VIEWS, item_ids: Sequence[str] | None = None
    ) -> dict[View, dict[str, str]]:
        """view -> {item id: description} for the cached ones among ``item_ids`` (all items)."""
        ids = list(self.data.catalog.ids if item_ids is None else item_ids)
        out: dict[View, dict[str, str]] = {}
        with closing(SemanticsCache(self.cache_dir)) as cache:
            for view in views:
                keys = {self.key(i, view): i for i in ids}
                out[view] = {keys[k]: text for k, text in cache.get_many(keys).items()}
        return out

    def _request(self, item_id: str, view: View) -> GenerationRequest:
        item = self.data.items[item_id]
        messages = self.templates[view].render(item=item, domain=item.domain)
        return GenerationRequest(
            messages=messages,
            max_tokens=self.cfg.max_tokens,
            temperature=0.0,
            seed=self.settings.seed,
        )

    async def agenerate(
        self,
        backend: LLMBackend,
        item_ids: Sequence[str],
        views: Sequence[View] = VIEWS,
        *,
        progress: bool = True,
    ) -> SemanticsReport:
        """Describe the items that lack a cached description, batch by batch."""
        started = time.perf_counter()
        report = SemanticsReport(requested=len(item_ids) * len(views))
        todo = [
            (i, v)
            for v, found in self.cached(views, item_ids).items()
            for i in item_ids
            if i not in found
        ]
        report.cached = report.requested - len(todo)
        step = max(1, self.cfg.batch_items)
        with (
            closing(SemanticsCache(self.cache_dir)) as cache,
            tqdm(
                total=len(todo), desc="describing items", unit="text", disable=not progress
            ) as bar,
        ):
            for start in range(0, len(todo), step):
                batch = todo[start : start + step]
                results = await backend.agenerate_batch([self._request(i, v) for i, v in batch])
                rows = []
                for (item_id, view), result in zip(batch, results, strict=True):
                    text = (
                        "" if isinstance(result, LLMError) else cut(result.text, self.cfg.max_chars)
                    )
                    if not text:
                        report.failed += 1
                        why = result if isinstance(result, LLMError) else "empty answer"
                        if len(report.errors) < 5:
                            report.errors.append(f"{item_id}/{view}: {why}")
                        continue
                    sha = self.templates[view].ref.sha256
                    rows.append((self.key(item_id, view), item_id, view, self.model, sha, text))
                cache.put_many(rows)  # committed before the next batch: resumable
                report.generated += len(rows)
                bar.update(len(batch))
        report.seconds = time.perf_counter() - started
        log.info(
            "item semantics (%s): %d requested, %d cached, %d generated, %d failed in %.1fs",
            self.model,
            report.requested,
            report.cached,
            report.generated,
            report.failed,
            report.seconds,
        )
        return report

    def generate(
        self,
        backend: LLMBackend,
        item_ids: Sequence[str],
        views: Sequence[View] = VIEWS,
        *,
        progress: bool = True,
    ) -> SemanticsReport:
        async def run() -> SemanticsReport:
            try:
                return await self.agenerate(backend, item_ids, views, progress=progress)
            finally:
                await backend.aclose()

        return asyncio.run(run())


def embed_texts(
    texts: Sequence[str], settings: Settings, *, embedder: Embedder | None = None
) -> np.ndarray:
    """(len(texts), dim) float32 vectors of any texts through the item embedding cache."""
    embedder = embedder or make_embedder(settings)
    keys = [text_key(t) for t in texts]
    by_key = dict(zip(keys, texts, strict=True))
    with EmbeddingCache(settings.embedding_cache_dir) as cache:
        vectors = cache.get_many(embedder.model_id, by_key)
        missing = [k for k in by_key if k not in vectors]
        for start in range(0, len(missing), 512):
            chunk = missing[start : start + 512]
            out = embedder.embed([by_key[k] for k in chunk])
            cache.put_many(embedder.model_id, chunk, out)
            vectors.update(zip(chunk, out, strict=True))
    if not keys:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.stack([vectors[k] for k in keys]).astype(np.float32)


ViewVectors = dict[str, tuple[np.ndarray, np.ndarray]]  # view -> (dense item ids, vectors)


def item_view_vectors(
    data: Dataset,
    settings: Settings,
    views: Sequence[View],
    *,
    backend: LLMBackend | None = None,
    progress: bool = True,
) -> tuple[ViewVectors, SemanticsReport | None]:
    """Each view's embedded descriptions, for the items that have one.

    First the ``max_items`` most frequent train items get described where the cache lacks
    them (the backend is only built then: ``make_backend(settings)`` unless given).
    """
    if not views:
        return {}, None
    cfg = settings.methods.semantics
    semantics = ItemSemantics(data, settings, model=backend.model if backend else None)
    report = None
    wanted = popular_items(data, cfg.max_items) if cfg.max_items > 0 else []
    cached = semantics.cached(views, wanted)
    if any(len(cached[v]) < len(wanted) for v in views):
        if backend is None:
            from agent.llm.factory import make_backend

            backend = make_backend(settings)
        report = semantics.generate(backend, wanted, views, progress=progress)
    index = data.catalog.index
    out: ViewVectors = {}
    for view, texts in semantics.cached(views).items():
        ids = sorted(texts, key=index.__getitem__)
        vectors = embed_texts([texts[i] for i in ids], settings)
        out[view] = (np.asarray([index[i] for i in ids], dtype=np.int64), vectors)
        log.info("item semantics: view %s for %d of %d items", view, len(ids), len(index))
    return out, report
