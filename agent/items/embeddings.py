"""Item embeddings for a dataset: one matrix row per dense item id, computed through the cache."""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm import tqdm

from agent.config import Settings
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
        missing = [key for key in texts_by_key if key not in vectors]
        log.info(
            "embeddings (%s): %d items, %d distinct texts, %d cached, %d to embed",
            embedder.model_id,
            len(keys),
            len(texts_by_key),
            len(vectors),
            len(missing),
        )
        if missing:
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
