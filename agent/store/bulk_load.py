"""Upserts into a Chroma server from a Ray actor pool (``compute.engine=ray``).

Chroma has no bulk import: precomputed vectors go in by ``upsert``, at most
``client.get_max_batch_size()`` per call, and Ray has no Chroma sink. Each actor holds its
own ``HttpClient``; upserts by id are idempotent, so a batch retried after a dead worker
writes nothing twice. An embedded store (a folder) is written by one process only: there the
driver upserts as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from agent.compute.batch import BatchJob, Columns, finish, run_batches
from agent.config import Settings

log = logging.getLogger(__name__)


class UpsertBatch:
    """A Ray actor's Chroma client; each call upserts one batch, grouped by collection."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from agent.store.client import make_client

        self._client = make_client(Settings.model_validate(settings))
        self._collections: dict[str, Any] = {}

    def __call__(self, batch: Columns) -> dict[str, np.ndarray]:
        errors = np.full(len(batch["row"]), "", dtype=object)
        names = batch["collection"]
        for name in dict.fromkeys(names.tolist()):
            at = np.flatnonzero(names == name)
            try:
                if name not in self._collections:
                    self._collections[name] = self._client.get_collection(name)
                self._collections[name].upsert(
                    ids=[str(i) for i in batch["item_id"][at]],
                    embeddings=np.stack(
                        [np.frombuffer(b, dtype="<f4") for b in batch["vector"][at]]
                    ),
                    metadatas=[json.loads(m) for m in batch["metadata"][at]],
                )
            except Exception as exc:  # the server's HTTP errors come in several kinds
                errors[at] = f"{type(exc).__name__}: {exc}"
        return {"row": batch["row"], "error": errors}


def upsert_on_ray(
    settings: Settings,
    collections: list[str],
    ids: list[str],
    vectors: np.ndarray,
    metadatas: list[dict[str, Any]],
    batch_size: int,
) -> dict[str, str]:
    """Upsert row i into ``collections[i]`` of the server from ``compute.workers`` actors;
    the failed rows (``collection/item id -> error``), empty when all went in."""
    rows = pa.table(
        {
            "row": [f"{c}/{i}" for c, i in zip(collections, ids, strict=True)],
            "collection": collections,
            "item_id": ids,
            "vector": [np.ascontiguousarray(v, dtype="<f4").tobytes() for v in vectors],
            "metadata": [json.dumps(m) for m in metadatas],
        }
    )
    key = hashlib.sha256("\n".join(sorted(set(collections))).encode()).hexdigest()[:16]
    job = BatchJob(
        name="upsert",
        key=key,
        id_column="row",
        actor=UpsertBatch,
        actor_args=(settings.model_dump(mode="json"),),
        batch_size=batch_size,
        workers=settings.compute.workers,
        cpus_per_worker=0.5,  # mostly waiting on the server
    )
    _, report = run_batches(job, rows, settings)
    if not report.failed:
        finish(job, settings)
    log.info(
        "upserted %d vectors into %d collection(s) from %d Ray workers in %.1fs: %.0f/s",
        report.computed,
        len(set(collections)),
        job.workers,
        report.seconds,
        report.rows_per_s,
    )
    return report.failed
