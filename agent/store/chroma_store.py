"""Item vectors in Chroma: an embedded ``PersistentClient`` or a ``chroma run`` server.

One collection per (settings.store.collection, embedder model id), so vectors of two
embedders never mix: it holds every item (ids, vectors, metadata), for readers of the whole
catalogue (``vectors``, the LangChain integration). Beside it, one collection per domain
(``<name>--<domain slug>-<hash>``) with that domain's items only, which domain queries read:
a top-n query with Chroma's ``where={"domain": ...}`` filter ran 18x slower than the same query
without a filter (p50 37.9 ms vs 2.1 ms, food-kitchen, 36k items), because the filter is
applied to the HNSW search; a collection per domain answers unfiltered
(``benchmarks/bench_foundation.py`` measures both).

Indexing is idempotent and resumable: it asks each collection what it already holds and
upserts only what is missing or changed. A store built before the domain collections
existed is moved over on first use: each domain collection is filled from the vectors the
main collection already holds (no re-embedding).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Metadata
from chromadb.errors import ChromaError
from tqdm import tqdm

from agent.config import Settings
from agent.data.schema import Dataset
from agent.store.client import StoreError, make_client

log = logging.getLogger(__name__)

__all__ = ["ItemIndex", "StoreError", "make_client"]

_TITLE_CHARS = 200  # metadata is for people reading the store, not for search
# What a server that died or broke mid-run raises through chromadb's HTTP client.
_STORE_FAILURES = (httpx.HTTPError, ChromaError, ConnectionError, OSError)


def collection_name(base: str, model_id: str) -> str:
    """A valid Chroma name (3-512 chars of [a-zA-Z0-9._-], alnum at both ends) per model."""
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", model_id.lower()).strip("-._")
    slug = re.sub(r"\.{2,}", ".", slug)[:80]
    # The hash keeps two model ids apart even when their slugs coincide.
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:8]
    return f"{base}-{slug}-{digest}".strip("-._")


def domain_collection_name(name: str, domain: str) -> str:
    """The collection of ``domain``'s items beside the main collection ``name``."""
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", domain.lower()).strip("-._")
    slug = re.sub(r"\.{2,}", ".", slug)[:40]
    digest = hashlib.sha256(domain.encode("utf-8")).hexdigest()[:6]
    return f"{name}--{slug}-{digest}" if slug else f"{name}--{digest}"


def vector_fingerprint(vector: np.ndarray) -> str:
    """Short hash of a float32 vector: tells a stale stored vector from the current one."""
    return hashlib.sha1(np.ascontiguousarray(vector, dtype="<f4").tobytes()).hexdigest()[:16]


@dataclass
class IndexReport:
    items: int
    upserted: int
    deleted: int
    count: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.upserted / self.seconds if self.seconds > 0 else 0.0


class ItemIndex:
    """The item collection of one embedder; ids are item ids, metadata {domain, title, fp}."""

    def __init__(self, client: ClientAPI, settings: Settings, model_id: str) -> None:
        self.client = client
        self.settings = settings
        self.model_id = model_id
        self.name = collection_name(settings.store.collection, model_id)
        self.batch_size = max(1, min(settings.store.batch_size, client.get_max_batch_size()))
        self._collection: Collection | None = None
        self._domains: dict[str, Collection] = {}
        self._ready: set[str] = set()  # domain collections known to be filled
        # compute.engine=ray with a server: the upserts of one index() call, run as one job
        self._deferred: list[tuple[Collection, list[int], str]] | None = None

    def _open(self, name: str, metadata: dict[str, str]) -> Collection:
        store = self.settings.store
        return self.client.get_or_create_collection(
            name,
            embedding_function=None,  # we pass vectors; the default would download a model
            configuration={
                "hnsw": {
                    "space": "cosine",
                    "ef_search": store.hnsw_ef_search,
                    "ef_construction": store.hnsw_ef_construction,
                }
            },
            metadata=metadata,
        )

    @property
    def collection(self) -> Collection:
        """The main collection: every item."""
        if self._collection is None:
            self._collection = self._open(self.name, {"model_id": self.model_id})
        return self._collection

    def domain_collection(self, domain: str) -> Collection:
        """The collection of ``domain``'s items alone (created empty on first use)."""
        if domain not in self._domains:
            name = domain_collection_name(self.name, domain)
            self._domains[domain] = self._open(name, {"model_id": self.model_id, "domain": domain})
        return self._domains[domain]

    def count(self) -> int:
        return self.collection.count()

    def drop(self) -> None:
        """Delete the collection and its domain collections (``--rebuild``); the next use
        creates them empty."""
        prefix = domain_collection_name(self.name, "")[: len(self.name) + 2]
        for c in self.client.list_collections():
            if c.name == self.name or c.name.startswith(prefix):
                self.client.delete_collection(c.name)
                log.info("dropped collection %s", c.name)
        self._collection = None
        self._domains = {}
        self._ready = set()

    def stored_fingerprints(self, collection: Collection | None = None) -> dict[str, str]:
        """id -> vector fingerprint of everything stored (in the main collection unless
        another is given), read in pages."""
        collection = self.collection if collection is None else collection
        out: dict[str, str] = {}
        offset = 0
        while True:
            page = collection.get(include=["metadatas"], limit=self.batch_size, offset=offset)
            metadatas = page["metadatas"] or [{} for _ in page["ids"]]
            for item_id, meta in zip(page["ids"], metadatas, strict=True):
                out[item_id] = str((meta or {}).get("fp", ""))
            if len(page["ids"]) < self.batch_size:
                return out
            offset += len(page["ids"])

    def index(self, data: Dataset, embeddings: np.ndarray, *, progress: bool = True) -> IndexReport:
        """Make the collection, and each domain's collection, hold exactly the catalogue's
        items with these vectors.

        Upserts only missing or changed items, in batches, so a killed run picks up where it
        stopped; items no longer in the catalogue are deleted. The report counts the main
        collection; its seconds include the domain collections.
        """
        catalog = data.catalog
        if embeddings.shape[0] != len(catalog) + 1:
            raise ValueError(
                f"embeddings have {embeddings.shape[0]} rows, expected {len(catalog) + 1}"
            )
        started = time.perf_counter()
        on_ray = self.settings.compute.engine == "ray" and bool(self.settings.store.url)
        self._deferred = [] if on_ray else None
        # domain collections first: a run killed before the main collection is complete is
        # redone by callers that check the main collection's count
        for domain in catalog.domains:
            dense = [int(d) for d in catalog.domain_items(domain)]
            self._sync_domain(data, embeddings, domain, dense, progress)
        stored = self.stored_fingerprints()
        todo = [
            dense
            for dense, item_id in enumerate(catalog.ids, start=1)
            if stored.get(item_id) != vector_fingerprint(embeddings[dense])
        ]
        stale = sorted(set(stored) - set(catalog.index))
        log.info(
            "collection %s: %d stored, %d to upsert, %d to delete (batch %d)",
            self.name,
            len(stored),
            len(todo),
            len(stale),
            self.batch_size,
        )
        self._write(data, embeddings, todo, self.collection, "items", progress)
        if self._deferred:
            self._upsert_on_ray(data, embeddings, self._deferred)
        self._deferred = None
        for start in range(0, len(stale), self.batch_size):
            try:
                self.collection.delete(ids=stale[start : start + self.batch_size])
            except _STORE_FAILURES as exc:
                raise self._failed("delete", start, len(stale), exc) from exc
        return IndexReport(
            items=len(catalog),
            upserted=len(todo),
            deleted=len(stale),
            count=self.count(),
            seconds=time.perf_counter() - started,
        )

    def _sync_domain(
        self,
        data: Dataset,
        embeddings: np.ndarray,
        domain: str,
        dense_ids: list[int],
        progress: bool,
    ) -> None:
        """Make ``domain``'s collection hold exactly these items with these vectors."""
        collection = self.domain_collection(domain)
        stored = self.stored_fingerprints(collection)
        ids = data.catalog.ids
        todo = [d for d in dense_ids if stored.get(ids[d - 1]) != vector_fingerprint(embeddings[d])]
        stale = sorted(set(stored) - {ids[d - 1] for d in dense_ids})
        self._write(data, embeddings, todo, collection, domain, progress)
        for start in range(0, len(stale), self.batch_size):
            try:
                collection.delete(ids=stale[start : start + self.batch_size])
            except _STORE_FAILURES as exc:
                raise self._failed(f"delete ({domain})", start, len(stale), exc) from exc

    def _move_domain(self, domain: str) -> Collection:
        """``domain``'s collection; filled first from the main collection's vectors when it
        is empty (a store indexed before domain collections existed: no re-embedding)."""
        collection = self.domain_collection(domain)
        if domain in self._ready or collection.count() > 0:
            self._ready.add(domain)
            return collection
        moved, offset = 0, 0
        while True:
            page = self.collection.get(
                where={"domain": domain},
                include=["embeddings", "metadatas"],
                limit=self.batch_size,
                offset=offset,
            )
            if not page["ids"]:
                break
            embs = page["embeddings"]
            metas = page["metadatas"]
            assert embs is not None and metas is not None
            collection.upsert(ids=page["ids"], embeddings=np.asarray(embs), metadatas=metas)
            moved += len(page["ids"])
            offset += len(page["ids"])
            if len(page["ids"]) < self.batch_size:
                break
        self._ready.add(domain)
        if moved:
            log.info(
                "collection %s: moved %d %s items into %s",
                self.name,
                moved,
                domain,
                collection.name,
            )
        return collection

    def _failed(self, what: str, done: int, total: int, exc: Exception) -> StoreError:
        """One line for a store that stopped answering mid-run: where, how far, how to resume."""
        where = self.settings.store.url or str(self.settings.store_path)
        return StoreError(
            f"Chroma at {where} failed during {what} after {done} of {total} items "
            f"({type(exc).__name__}: {exc}); what was written is kept: run `recbridge index` "
            "again to resume"
        )

    def _write(
        self,
        data: Dataset,
        embeddings: np.ndarray,
        todo: list[int],
        collection: Collection,
        label: str,
        progress: bool,
    ) -> None:
        """Upsert the items ``todo`` (dense ids) into ``collection``: in batches from this
        process, or from Ray actors into a server (``compute.engine=ray`` with ``store.url``)."""
        if not todo:
            return
        if self._deferred is not None:  # one Ray job for every collection, at the end
            self._deferred.append((collection, todo, label))
            return
        desc = f"indexing {label}"
        with tqdm(total=len(todo), desc=desc, unit="item", disable=not progress) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                try:
                    self._upsert(data, embeddings, chunk, collection)
                except _STORE_FAILURES as exc:
                    what = "upsert" if collection is self._collection else f"upsert ({label})"
                    raise self._failed(what, start, len(todo), exc) from exc
                bar.update(len(chunk))
                if collection is self._collection:  # (a resume test watches for this line)
                    log.debug("upserted %d/%d", start + len(chunk), len(todo))
                else:
                    log.debug("%s collection: %d/%d", label, start + len(chunk), len(todo))

    def _upsert_on_ray(
        self,
        data: Dataset,
        embeddings: np.ndarray,
        writes: list[tuple[Collection, list[int], str]],
    ) -> None:
        """Every collection's upserts from Ray actors, each with its own client, as one job:
        an embedded store is one process's folder, so only a server is written this way."""
        from agent.store.bulk_load import upsert_on_ray

        collections: list[str] = []
        dense: list[int] = []
        for collection, todo, _ in writes:
            collections += [collection.name] * len(todo)
            dense += todo
        failed = upsert_on_ray(
            self.settings,
            collections,
            [data.catalog.ids[d - 1] for d in dense],
            embeddings[dense],
            [dict(m) for m in self._metadatas(data, embeddings, dense)],
            self.batch_size,
        )
        if failed:
            first = next(iter(failed.items()))
            raise self._failed(
                "upsert on Ray",
                len(dense) - len(failed),
                len(dense),
                RuntimeError(f"{len(failed)} items failed, e.g. {first[0]}: {first[1]}"),
            )

    @staticmethod
    def _metadatas(
        data: Dataset, embeddings: np.ndarray, dense_ids: Sequence[int]
    ) -> list[Metadata]:
        return [
            {
                "domain": data.items[iid].domain,
                "title": data.items[iid].title[:_TITLE_CHARS],
                "fp": vector_fingerprint(embeddings[d]),
            }
            for iid, d in ((data.catalog.ids[d - 1], d) for d in dense_ids)
        ]

    def _upsert(
        self,
        data: Dataset,
        embeddings: np.ndarray,
        dense_ids: Sequence[int],
        collection: Collection,
    ) -> None:
        ids = [data.catalog.ids[d - 1] for d in dense_ids]
        metadatas = self._metadatas(data, embeddings, dense_ids)
        collection.upsert(ids=ids, embeddings=embeddings[list(dense_ids)], metadatas=metadatas)

    def vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors by id (Chroma returns them in its own order)."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(item_ids), self.batch_size):
            page = self.collection.get(
                ids=list(item_ids[start : start + self.batch_size]), include=["embeddings"]
            )
            embs = page["embeddings"]
            if embs is None:
                continue
            for item_id, vec in zip(page["ids"], embs, strict=True):
                out[item_id] = np.asarray(vec, dtype=np.float32)
        return out

    def query(
        self, vector: np.ndarray, domain: str, n: int, exclude_ids: Sequence[str] = ()
    ) -> list[tuple[str, float]]:
        """Top-``n`` (item_id, cosine) of ``domain``, best first, minus ``exclude_ids``."""
        return self.query_batch(np.asarray(vector)[None, :], [domain], n, [exclude_ids])[0]

    def query_filtered(self, vector: np.ndarray, domain: str, n: int) -> list[tuple[str, float]]:
        """Top-``n`` of ``domain`` from the main collection with Chroma's metadata filter: the
        design the domain collections replaced, kept for the side-by-side benchmark."""
        where: dict[str, Any] = {"domain": domain}
        res = self.collection.query(
            query_embeddings=np.asarray(vector, dtype=np.float32)[None, :],
            n_results=n,
            where=where,
            include=["distances"],
        )
        distances = res["distances"] or [[]]
        return [(iid, 1.0 - float(d)) for iid, d in zip(res["ids"][0], distances[0], strict=True)]

    def query_all(self, vector: np.ndarray, n: int) -> list[tuple[str, float]]:
        """Top-``n`` of every domain together (main collection, no filter): the benchmark's
        reference for a query's cost."""
        res = self.collection.query(
            query_embeddings=np.asarray(vector, dtype=np.float32)[None, :],
            n_results=n,
            include=["distances"],
        )
        distances = res["distances"] or [[]]
        return [(iid, 1.0 - float(d)) for iid, d in zip(res["ids"][0], distances[0], strict=True)]

    def query_batch(
        self,
        vectors: np.ndarray,
        domains: Sequence[str],
        n: int,
        exclude_ids: Sequence[Sequence[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """``query`` for many vectors: one Chroma call per domain."""
        vectors = np.asarray(vectors, dtype=np.float32)
        excludes = [set(e) for e in exclude_ids] if exclude_ids is not None else None
        if len(domains) != len(vectors) or (excludes is not None and len(excludes) != len(vectors)):
            raise ValueError("vectors, domains and exclude_ids must have the same length")
        results: list[list[tuple[str, float]]] = [[] for _ in range(len(vectors))]
        if n <= 0:
            return results
        by_domain: dict[str, list[int]] = {}
        for row, domain in enumerate(domains):
            by_domain.setdefault(domain, []).append(row)
        for domain, rows in by_domain.items():
            # Over-fetch so that n remain after dropping excluded ids.
            extra = max((len(excludes[r]) for r in rows), default=0) if excludes else 0
            found = self._query(vectors[rows], domain, n + extra)
            for row, hits in zip(rows, found, strict=True):
                skip = excludes[row] if excludes else set()
                results[row] = [(iid, sim) for iid, sim in hits if iid not in skip][:n]
        return results

    def _query(self, vectors: np.ndarray, domain: str, n: int) -> list[list[tuple[str, float]]]:
        # the domain's own collection, queried without a filter (see the module docstring)
        res = self._move_domain(domain).query(
            query_embeddings=vectors, n_results=n, include=["distances"]
        )
        distances = res["distances"] or [[] for _ in res["ids"]]
        # Chroma's cosine distance is 1 - cosine similarity.
        return [
            [(iid, 1.0 - float(dist)) for iid, dist in zip(ids, dists, strict=True)]
            for ids, dists in zip(res["ids"], distances, strict=True)
        ]
