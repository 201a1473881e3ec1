"""Foundation benchmark: embedding + index throughput, retrieval latency, training and eval speed.

    python -m benchmarks.bench_foundation --out runs/bench.json [--items 5000] [--epochs 1]
        [--stages embed,index,retrieval,train,eval] [--config FILE] [--set key=value ...]

Stages (each timed on its own; a failing stage is recorded with its error and the run goes on):

- ``embed``: item embeddings through the cache (``agent.items.embeddings.item_embeddings``);
  texts/s counts only texts actually embedded (cache hits are reported apart).
- ``index``: upsert of every item vector into a FRESH Chroma collection (a temporary embedded
  store unless ``store.url`` is set), items/s; the time includes filling the per-domain
  collections too (each item is written twice: main collection + its domain's).
- ``retrieval``: top-``--top-n`` of the item's domain for ``--queries`` seeded random
  items, p50/p95/mean latency in ms, three ways side by side on the same queries:
  ``domain`` (``ItemIndex.query``: the domain's own collection, no filter; what RecBridge
  uses), ``filtered`` (the main collection with Chroma's ``domain`` metadata filter: the
  design it replaced) and ``unfiltered`` (the main collection, every domain, no filter: the
  reference cost of one query). Each way gets a warm-up query first.
- ``train``: ``fit`` for sasrec-id / sasrec-text with ``--epochs`` epochs, no early stopping;
  seconds per epoch as the trainer reports it.
- ``eval``: users/s of ``RankingEvaluator`` (test split, sampled-999, no bootstrap) for
  popularity and the models trained above.

Peak RSS (``resource.getrusage``) is recorded after each stage and at the end. Not a test.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from agent.config import Settings, load_settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset
from agent.logging_setup import setup_logging
from agent.models.base import Recommender
from eval.runinfo import run_info

log = logging.getLogger("benchmarks.foundation")

STAGES = ("embed", "index", "retrieval", "train", "eval")
TRAINED = ("sasrec-id", "sasrec-text")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@dataclass
class BenchArgs:
    """The command line, as recorded in the output's ``params``."""

    out: Path
    data: Path | None = None
    config: Path | None = None
    set_items: list[str] = field(default_factory=list)
    stages: str = ",".join(STAGES)
    items: int = 0
    queries: int = 200
    top_n: int = 100
    epochs: int = 1
    log_level: str = "INFO"


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS; this project runs on Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def subset_items(data: Dataset, n: int, seed: int) -> Dataset:
    """A seeded sample of ``n`` items (no users): for embed/index/retrieval on a budget."""
    if n <= 0 or n >= len(data.items):
        return data
    ids = sorted(data.items)
    keep = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    items = {ids[i]: data.items[ids[i]] for i in sorted(keep)}
    return Dataset(name=f"{data.name}-items{n}", items=items, users=[])


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


class Bench:
    def __init__(self, settings: Settings, data: Dataset, args: BenchArgs) -> None:
        self.settings = settings
        self.data = data
        self.args = args
        self.items = subset_items(data, args.items, settings.seed)
        self.embeddings: np.ndarray | None = None
        self.index: Any = None  # agent.store.chroma_store.ItemIndex, imported lazily
        self.models: dict[str, Recommender] = {}

    def embed(self) -> dict[str, Any]:
        from agent.items.embedder import make_embedder
        from agent.items.embeddings import item_embeddings

        embedder = make_embedder(self.settings)
        started = time.perf_counter()
        self.embeddings = item_embeddings(self.items, self.settings, embedder=embedder)
        seconds = time.perf_counter() - started
        n = len(self.items.items)
        return {
            "model_id": getattr(embedder, "model_id", None),
            "items": n,
            "dim": int(self.embeddings.shape[1]),
            "seconds": seconds,
            "items_per_s_including_cache": n / seconds if seconds > 0 else None,
        }

    def index_items(self, store_dir: Path) -> dict[str, Any]:
        from agent.store.chroma_store import ItemIndex, make_client

        if self.embeddings is None:
            self.embed()
        assert self.embeddings is not None
        settings = self.settings
        if not settings.store.url:  # a fresh embedded store: measure a full index build
            settings = settings.model_copy(
                update={"store": settings.store.model_copy(update={"path": store_dir})}
            )
        index = ItemIndex(make_client(settings), settings, f"bench-{time.time_ns()}")
        report = index.index(self.items, self.embeddings, progress=False)
        self.index = index
        return {
            "items": report.items,
            "upserted": report.upserted,
            "seconds": report.seconds,
            "items_per_s": report.items_per_s,
            "batch_size": index.batch_size,
            "store": settings.store.url or "embedded (temporary)",
        }

    def retrieval(self, store_dir: Path) -> dict[str, Any]:
        if self.index is None:
            self.index_items(store_dir)
        assert self.embeddings is not None
        catalog = self.items.catalog
        rng = np.random.default_rng(self.settings.seed)
        picks = rng.choice(len(catalog), size=min(self.args.queries, len(catalog)), replace=False)
        index, n = self.index, self.args.top_n
        ways: dict[str, Callable[[np.ndarray, str], object]] = {
            "domain": lambda vec, domain: index.query(vec, domain, n),
            "filtered": lambda vec, domain: index.query_filtered(vec, domain, n),
            "unfiltered": lambda vec, _domain: index.query_all(vec, n),
        }
        out: dict[str, Any] = {"queries": len(picks), "top_n": n}
        for way, query in ways.items():
            first = int(picks[0]) + 1  # warm-up: opens the collection (and moves a domain)
            query(self.embeddings[first], self.items.items[catalog.ids[first - 1]].domain)
            latencies: list[float] = []
            for dense in picks + 1:
                item_id = catalog.ids[dense - 1]
                started = time.perf_counter()
                query(self.embeddings[dense], self.items.items[item_id].domain)
                latencies.append(time.perf_counter() - started)
            out[way] = percentiles_ms(latencies)
        return out

    def train(self, out_dir: Path) -> dict[str, Any]:
        from agent.models.registry import build_recommender

        train_cfg = self.settings.train.model_copy(update={"epochs": self.args.epochs})
        settings = self.settings.model_copy(update={"train": train_cfg})
        out: dict[str, Any] = {}
        for name in TRAINED:
            try:
                model = build_recommender(name, self.data, settings)
                report = model.fit(valid_fn=None, out=out_dir / name)
            except Exception as exc:  # e.g. a model module not written yet: record, go on
                log.warning("train %s failed: %s", name, exc)
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            self.models[name] = model
            out[name] = {
                "epochs": report.epochs,
                "seconds": report.seconds,
                "seconds_per_epoch": report.seconds_per_epoch,
                "train_users": sum(1 for _ in self.data.iter_split("train")),
                "device": settings.train.device,
            }
        return out

    def evaluate(self) -> dict[str, Any]:
        from agent.models.popularity import PopularityRecommender
        from eval.evaluator import RankingEvaluator

        started = time.perf_counter()
        evaluator = RankingEvaluator(
            self.data,
            self.settings,
            split="test",
            protocol="sampled-999",
            bootstrap=0,
            show_progress=False,
        )
        out: dict[str, Any] = {"candidates_seconds": time.perf_counter() - started}
        models = {"popularity": PopularityRecommender(self.data, self.settings), **self.models}
        for name, model in models.items():
            result = evaluator(model, name=name)
            out[name] = {
                "users": result.n_users,
                "seconds": result.seconds,
                "users_per_s": result.users_per_s,
                "ndcg@10": result.primary,
            }
        return out


def run_stage(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    log.info("stage %s ...", name)
    started = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # one broken stage must not lose the others' numbers
        log.exception("stage %s failed", name)
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results[name]["stage_seconds"] = time.perf_counter() - started
    results[name]["peak_rss_mb_after"] = peak_rss_mb()


@app.command()
def main(
    out: Annotated[Path, typer.Option(help="JSON file to write")],
    data: Annotated[Path | None, typer.Option(help="data folder (data.path)")] = None,
    config: Annotated[Path | None, typer.Option(help="settings file")] = None,
    set_items: Annotated[
        list[str] | None, typer.Option("--set", help="key=value (repeatable)")
    ] = None,
    stages: Annotated[str, typer.Option(help=f"comma list of {STAGES}")] = ",".join(STAGES),
    items: Annotated[int, typer.Option(help="embed/index a seeded sample (0 = all)")] = 0,
    queries: Annotated[int, typer.Option(help="retrieval queries")] = 200,
    top_n: Annotated[int, typer.Option(help="retrieval depth")] = 100,
    epochs: Annotated[int, typer.Option(help="training epochs per model")] = 1,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
) -> None:
    """Embedding + index throughput, retrieval latency, training and eval speed (see the
    module docstring)."""
    args = BenchArgs(
        out, data, config, list(set_items or []), stages, items, queries, top_n, epochs, log_level
    )
    raise typer.Exit(code=run(args))


def run(args: BenchArgs) -> int:
    setup_logging(args.log_level)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        log.error("unknown stages %s; choose from %s", unknown, STAGES)
        return 2
    overrides = {"data.path": str(args.data)} if args.data else {}
    settings = load_settings(args.config, overrides=overrides, set_items=args.set_items)
    started = time.perf_counter()
    data = load_dataset(settings.data)
    results: dict[str, Any] = {
        "load": {
            "seconds": time.perf_counter() - started,
            "items": len(data.items),
            "users": len(data.users),
            "peak_rss_mb_after": peak_rss_mb(),
        },
    }
    bench = Bench(settings, data, args)
    with tempfile.TemporaryDirectory(prefix="recbridge-bench-") as tmp:
        tmp_dir = Path(tmp)
        plan: dict[str, Callable[[], dict[str, Any]]] = {
            "embed": bench.embed,
            "index": lambda: bench.index_items(tmp_dir / "chroma"),
            "retrieval": lambda: bench.retrieval(tmp_dir / "chroma"),
            "train": lambda: bench.train(tmp_dir / "checkpoints"),
            "eval": bench.evaluate,
        }
        for stage in STAGES:
            if stage in stages:
                run_stage(stage, plan[stage], results)
        if bench.index is not None and settings.store.url:
            bench.index.drop()  # a server outlives the run: remove the benchmark's collection
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        **run_info(),
        "stages": results,
        "peak_rss_mb": peak_rss_mb(),
        "total_seconds": time.perf_counter() - started,
        "settings": settings.model_dump(mode="json"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    log.info("benchmark written to %s (peak RSS %.0f MB)", args.out, payload["peak_rss_mb"])
    return 0


if __name__ == "__main__":
    app()
