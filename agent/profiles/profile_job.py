"""Profiling on Ray (``compute.engine=ray``): users in batches over an actor pool, each actor
running the same ``HierarchicalProfiler`` as the local path against one of the LLM servers
``llm.url`` lists.

Why actors with our own client rather than ``ray.data.llm``'s ``HttpRequestProcessor``: a
profile is several dependent calls per user (domain profiles, then the cross-domain one, each
checked, mended or retried, else replaced by the facts' profile), and that processor maps one
row to one request and fails the job once its retries are spent. Our OpenAI client retries
429/5xx/timeouts with backoff as it does, and the profiler counts every fallback per node.

The driver filters the users the profile cache already holds, sends the rest, reads the trees
back from the job's parquet parts and puts them in the cache: workers never write the
driver's SQLite files, so the job runs the same on one machine or many.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from agent.compute.batch import BatchJob, Columns, finish, run_batches
from agent.compute.runtime import worker_settings
from agent.config import Settings
from agent.data.schema import UserSequence
from agent.profiles.profiler import HierarchicalProfiler, ProfileRunStats, UserResult
from agent.profiles.schema import ProfileTree

log = logging.getLogger(__name__)


class ProfileBatch:
    """A Ray actor: the dataset, item vectors and one profiler per LLM server, loaded once."""

    def __init__(self, settings: dict[str, Any], adapter: str | None) -> None:
        from agent.data.loader import load_dataset
        from agent.items.embeddings import item_embeddings

        self._settings = Settings.model_validate(settings)
        self._data = load_dataset(self._settings.data)
        self._users = {
            u.user_id: u for split in ("train", "valid", "test") for u in self._data.split(split)
        }
        # Filled by the driver before the job starts: read from the shared cache here.
        self._embeddings = item_embeddings(self._data, self._settings, progress=False)
        self._adapter = adapter
        self._profilers: dict[str, HierarchicalProfiler] = {}

    def _profiler(self, url: str) -> HierarchicalProfiler:
        if url not in self._profilers:
            from agent.llm.factory import make_backend

            settings = self._settings.model_copy(
                update={"llm": self._settings.llm.model_copy(update={"url": url})}
            )
            backend = None if settings.profile.mode == "facts" else make_backend(settings)
            self._profilers[url] = HierarchicalProfiler(
                backend,
                self._data,
                settings,
                embeddings=self._embeddings,
                adapter=self._adapter,
            )
        return self._profilers[url]

    def __call__(self, batch: Columns) -> dict[str, np.ndarray]:
        ids = [str(u) for u in batch["user_id"]]
        trees = np.full(len(ids), "", dtype=object)
        errors = np.full(len(ids), "", dtype=object)
        seconds = np.zeros(len(ids), dtype=np.float64)
        users = [self._users.get(uid) for uid in ids]
        known = [u for u in users if u is not None]
        results: dict[str, UserResult] = {}
        if known:
            results = {
                r.user_id: r
                for r in self._profiler(str(batch["server"][0])).profile_users(known)[0]
            }
        for i, uid in enumerate(ids):
            result = results.get(uid)
            if result is None:
                errors[i] = f"user {uid} is not in the dataset"
            elif result.tree is None:
                errors[i] = result.error or "failed"
            else:
                trees[i] = result.tree.model_dump_json()
                seconds[i] = result.seconds
        return {"user_id": batch["user_id"], "tree": trees, "error": errors, "seconds": seconds}


def _job_key(profiler: HierarchicalProfiler, settings: Settings) -> str:
    """What the trees depend on besides the user: the cache keys' ingredients."""
    body = {
        "profile": settings.profile.model_dump(mode="json"),
        "llm": [settings.llm.model, profiler.adapter],
        "data": str(settings.data.path),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def profile_on_ray(
    profiler: HierarchicalProfiler,
    users: Sequence[UserSequence],
    progress: Callable[[list[UserResult]], None] | None = None,
) -> tuple[list[UserResult], ProfileRunStats]:
    """``profiler.profile_users`` with the uncached users profiled on Ray; results in the
    order of ``users``, each fresh tree put in the profiler's cache and given to its
    ``on_results``, as the local path does."""
    settings = profiler.settings
    stats = ProfileRunStats()
    cached = profiler.cached_users(users)
    local, stats_local = profiler.profile_users([u for u in users if u.user_id in cached])
    results = {r.user_id: r for r in local}
    if progress is not None and local:
        progress(local)
    todo = [u for u in users if u.user_id not in cached]
    if todo:
        urls = settings.llm_urls
        size = settings.compute.profile_batch
        # consecutive batches go to the servers in turn
        servers = [urls[(i // size) % len(urls)] for i in range(len(todo))]
        job = BatchJob(
            name="profile",
            key=_job_key(profiler, settings),
            id_column="user_id",
            actor=ProfileBatch,
            actor_args=(worker_settings(settings), profiler.adapter),
            batch_size=size,
            workers=settings.compute.workers,
        )
        rows = pa.table({"user_id": [u.user_id for u in todo], "server": servers})
        table, report = run_batches(job, rows, settings)
        by_id = {
            str(uid): (tree, error, secs)
            for uid, tree, error, secs in zip(
                table.column("user_id").to_pylist(),
                table.column("tree").to_pylist(),
                table.column("error").to_pylist(),
                table.column("seconds").to_pylist(),
                strict=True,
            )
        }
        fresh: list[UserResult] = []
        for user in todo:
            tree_json, error, secs = by_id.get(user.user_id, ("", "no result came back", 0.0))
            if error:
                fresh.append(UserResult(user.user_id, error=f"on Ray: {error}"))
                continue
            tree = ProfileTree.model_validate_json(tree_json)
            if profiler.cache is not None:
                profiler.cache.put(tree)
            fresh.append(UserResult(user.user_id, tree=tree, seconds=float(secs)))
        if profiler.on_results is not None:
            profiler.on_results(fresh)
        if progress is not None:
            progress(fresh)
        results.update((r.user_id, r) for r in fresh)
        if not report.failed:
            finish(job, settings)
        stats.seconds = report.seconds
        log.info(
            "profiled %d users on Ray (%d workers, %d server(s)): %.1f users/min, %d failed",
            len(todo),
            job.workers,
            len(urls),
            60 * report.computed / max(report.seconds, 1e-9),
            len(report.failed),
        )
    ordered = [results[u.user_id] for u in users]
    for result in ordered:
        stats.add(result)
    stats.seconds += stats_local.seconds
    return ordered, stats
