"""Throughput of the batch jobs on this machine, local engine vs Ray (``compute.engine``).

    python -m benchmarks.bench_compute embedding [--items 8192] [--out runs/bench/embedding.json]
    python -m benchmarks.bench_compute overhead [--out runs/bench/ray-overhead.json]

``embedding``: the same seeded sample of item texts embedded by the packaged MiniLM in fresh
caches, each way in turn, in texts/s:
- ``plain``: ``SentenceTransformer.encode`` on the whole list (batch 32), the reference;
- ``before``: the old local path, 512-text chunks in catalogue order, batch 64;
- ``local``: the local path now (``item_embeddings``: one global length order, batch 32);
- ``ray``: ``compute.engine=ray``, ``compute.workers`` actors of one CPU each, including the
  start of the local cluster and of the actors.
``overhead``: what Ray costs before any work: a local cluster's start, and a job of 8 rows
through a one-actor pool that does nothing. Not a test.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import typer

from agent.config import Settings, load_settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset
from agent.logging_setup import setup_logging

log = logging.getLogger("recbridge.bench")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _sample(data: Dataset, n: int, seed: int) -> Dataset:
    """``data`` with a seeded sample of ``n`` items in its catalogue (and no users)."""
    ids = sorted(data.items)
    keep = set(random.Random(seed).sample(ids, min(n, len(ids))))
    return Dataset(data.name, {i: data.items[i] for i in ids if i in keep}, [])


def _write(out: Path, body: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(body, indent=2), encoding="utf-8")
    log.info("wrote %s", out)


@app.command()
def embedding(
    items: Annotated[int, typer.Option(help="Items sampled from the catalogue.")] = 8192,
    workers: Annotated[int, typer.Option(help="Ray actors (compute.workers).")] = 2,
    out: Annotated[Path, typer.Option()] = Path("runs/bench/embedding.json"),
) -> None:
    from agent.items.embedder import MiniLMEmbedder
    from agent.items.embeddings import item_embeddings
    from agent.items.text import renderer_for

    setup_logging("INFO")
    base = load_settings()
    data = _sample(load_dataset(base.data), items, base.seed)
    renderer = renderer_for(base)
    texts = [renderer.item_text(data.items[i]) for i in data.catalog.ids]
    results: dict[str, Any] = {"items": len(texts), "workers": workers}
    model = MiniLMEmbedder().model
    model.encode(texts[:64], batch_size=32)  # warm up

    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    results["plain"] = len(texts) / (time.perf_counter() - started)

    started = time.perf_counter()
    for start in range(0, len(texts), 512):
        model.encode(texts[start : start + 512], batch_size=64, normalize_embeddings=True)
    results["before"] = len(texts) / (time.perf_counter() - started)

    vectors: dict[str, np.ndarray] = {}
    for engine in ("local", "ray"):
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                overrides={
                    "work_dir": tmp,
                    "compute.engine": engine,
                    "compute.workers": workers,
                }
            )
            started = time.perf_counter()
            vectors[engine] = item_embeddings(data, settings, progress=False)
            results[engine] = len(texts) / (time.perf_counter() - started)
    results["max_abs_diff"] = float(np.abs(vectors["local"] - vectors["ray"]).max())
    log.info(
        "texts/s: %s", {k: round(v, 1) if isinstance(v, float) else v for k, v in results.items()}
    )
    _write(out, results)


class _Nothing:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"key": batch["key"]}


@app.command()
def overhead(out: Annotated[Path, typer.Option()] = Path("runs/bench/ray-overhead.json")) -> None:
    import ray
    from ray import cloudpickle

    from agent.compute.batch import BatchJob, run_batches

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]
    setup_logging("INFO")
    work = Path(tempfile.mkdtemp())
    settings: Settings = load_settings(overrides={"work_dir": str(work)})
    started = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False)
    start_s = time.perf_counter() - started
    rows = pa.table({"key": [f"k{i}" for i in range(8)]})
    job = BatchJob("overhead", "noop", "key", _Nothing, batch_size=8, workers=1)
    started = time.perf_counter()
    run_batches(job, rows, settings)
    job_s = time.perf_counter() - started
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    _write(out, {"cluster_start_s": start_s, "noop_job_s": job_s})


if __name__ == "__main__":
    app()
