"""Item embeddings for a dataset: one matrix row per dense item id, computed through the cache.

The texts still missing from the cache are embedded in one global order of length: the model
pads each batch to its longest text, and sorting only within each cached chunk of 512 (as
before) left batches of mixed lengths. With ``compute.engine=ray`` the same texts, in the same
order, go through an actor pool (``agent.compute.batch``) and come back through the cache.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from agent.compute.batch import BatchJob, Columns, finish, run_batches
from agent.config import EmbeddingSettings, Settings
from agent.data.schema import Dataset
from agent.items.cache import EmbeddingCache, text_key
from agent.items.embedder import Embedder, EmbeddingError, make_embedder
from agent.items.text import renderer_for

log = logging.getLogger(__name__)

# Texts embedded (and written to the cache) per step: the unit of progress a kill can lose.
_WRITE_BATCH = 512


def item_embeddings(
    data: Dataset,
    settings: Settings,
    *,
    progress: bool = True,
    embedder: Embedder | None = None,
) -> np.ndarray:
    """(len(catalog) + 1, dim) float32; row 0 (padding) is zeros, row i is dense item id i.

    Only texts missing from the cache are embedded; each batch is cached as soon as it is done,
    so an interrupted run resumes where it stopped.
    """
    embedder = embedder or make_embedder(settings)
    renderer = renderer_for(settings)
    catalog = data.catalog
    texts = [renderer.item_text(data.items[iid]) for iid in catalog.ids]
    keys = [text_key(text) for text in texts]
    texts_by_key = dict(zip(keys, texts, strict=True))  # items with equal text share one vector
    with EmbeddingCache(settings.embedding_cache_dir) as cache:
        vectors = cache.get_many(embedder.model_id, texts_by_key)
        missing = sorted(
            (key for key in texts_by_key if key not in vectors),
            key=lambda k: len(texts_by_key[k]),
        )
        log.info(
            "embeddings (%s): %d items, %d distinct texts, %d cached, %d to embed",
            embedder.model_id,
            len(keys),
            len(texts_by_key),
            len(vectors),
            len(missing),
        )
        if missing and settings.compute.engine == "ray":
            vectors.update(_embed_on_ray(missing, texts_by_key, settings, embedder, cache))
        elif missing:
            started = time.perf_counter()
            with tqdm(
                total=len(missing), desc="embedding items", unit="item", disable=not progress
            ) as bar:
                for start in range(0, len(missing), _WRITE_BATCH):
                    batch = missing[start : start + _WRITE_BATCH]
                    out = embedder.embed([texts_by_key[k] for k in batch])
                    cache.put_many(embedder.model_id, batch, out)
                    vectors.update(zip(batch, out, strict=True))
                    bar.update(len(batch))
            seconds = time.perf_counter() - started
            log.info(
                "embedded %d texts in %.1fs (%.0f texts/s)",
                len(missing),
                seconds,
                len(missing) / max(seconds, 1e-9),
            )
    dims = {v.shape[0] for v in vectors.values()}
    if len(dims) != 1:
        raise EmbeddingError(f"{embedder.model_id}: cached vectors have mixed dimensions {dims}")
    matrix = np.zeros((len(catalog) + 1, dims.pop()), dtype=np.float32)
    matrix[1:] = np.stack([vectors[k] for k in keys])
    return matrix


class EmbedBatch:
    """A Ray actor's embedder: built once per worker, called on ``key``/``text`` batches."""

    def __init__(self, embedding: dict[str, Any]) -> None:
        self._embedder = make_embedder(EmbeddingSettings.model_validate(embedding))

    def __call__(self, batch: Columns) -> dict[str, np.ndarray]:
        keys = batch["key"]
        try:
            out = self._embedder.embed([str(t) for t in batch["text"]])
        except EmbeddingError as exc:  # the whole batch failed (e.g. the API is down)
            return {
                "key": keys,
                "vector": np.full(len(keys), b"", dtype=object),
                "error": np.full(len(keys), str(exc), dtype=object),
            }
        blobs = np.empty(len(keys), dtype=object)
        blobs[:] = [row.astype("<f4").tobytes() for row in out]
        return {"key": keys, "vector": blobs}


def _embed_on_ray(
    missing: list[str],
    texts_by_key: dict[str, str],
    settings: Settings,
    embedder: Embedder,
    cache: EmbeddingCache,
) -> dict[str, np.ndarray]:
    """Embed ``missing`` on Ray, store the vectors in ``cache``, return them."""
    job = BatchJob(
        name="embed",
        key=embedder.model_id.replace("/", "--"),
        id_column="key",
        actor=EmbedBatch,
        actor_args=(settings.embedding.model_dump(mode="json"),),
        batch_size=settings.compute.embed_batch,
        workers=settings.compute.workers,
    )
    rows = pa.table({"key": missing, "text": [texts_by_key[k] for k in missing]})
    table, report = run_batches(job, rows, settings)
    ok = table.filter(pa.compute.equal(table.column("error"), ""))
    keys = ok.column("key").to_pylist()
    vectors = (
        np.stack([np.frombuffer(blob, dtype="<f4") for blob in ok.column("vector").to_pylist()])
        if keys
        else np.zeros((0, 0), dtype=np.float32)
    )
    for start in range(0, len(keys), _WRITE_BATCH):
        cache.put_many(
            embedder.model_id,
            keys[start : start + _WRITE_BATCH],
            vectors[start : start + _WRITE_BATCH],
        )
    if report.failed:
        example = next(iter(report.failed.values()))
        raise EmbeddingError(
            f"{len(report.failed)} of {len(missing)} texts failed on Ray after retries (first: "
            f"{example}); the {len(keys)} done are cached, run again to retry the rest"
        )
    finish(job, settings)
    log.info(
        "embedded %d texts on Ray (%d workers) in %.1fs (%.0f texts/s, %d resumed)",
        len(missing),
        job.workers,
        report.seconds,
        report.rows_per_s,
        report.resumed,
    )
    return dict(zip(keys, vectors, strict=True))
