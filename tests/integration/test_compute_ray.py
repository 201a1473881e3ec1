"""The batch jobs on a real local Ray cluster (one per test run, ``ray_cluster``): the same
results as the local engine, a worker killed mid-job, a job resumed from its parts, an LLM
endpoint that fails then recovers, and a Chroma server filled by Ray actors."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from agent.compute.batch import BatchJob, finish, run_batches
from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.items.cache import EmbeddingCache
from agent.items.embeddings import item_embeddings
from agent.items.text import renderer_for
from agent.llm.factory import make_backend
from agent.models.prepare import train_checkpoint
from agent.profiles.profile_job import profile_on_ray
from agent.profiles.profiler import HierarchicalProfiler
from agent.scoring import score_file
from agent.service.score_job import score_file_on_ray
from agent.store.chroma_store import ItemIndex, make_client
from eval.evaluator import make_valid_fn
from tests.integration.llm_fixtures import BASE
from tests.integration.test_profiles_grounded import GROUNDED, _users
from tests.llm_fault_server import FaultServer, Step

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = {"compute.engine": "ray", "compute.workers": 2, "compute.embed_batch": 64}


def _settings(slice_dir: Path, work: Path, **extra: Any) -> Settings:
    return load_settings(overrides={"data.path": str(slice_dir), "work_dir": str(work), **extra})


@pytest.fixture(scope="module")
def local_vectors(slice_data: Dataset, session_settings: Settings) -> np.ndarray:
    """The slice's item matrix from the local engine (the session's shared cache)."""
    return item_embeddings(slice_data, session_settings, progress=False)


def _worker_pids() -> list[int]:
    """Processes of Ray Data actors (their titles name the map worker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"MapWorker" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_embeddings_equal_on_both_engines_with_a_worker_killed_midway(
    ray_cluster: Any,
    slice_dir: Path,
    slice_data: Dataset,
    local_vectors: np.ndarray,
    tmp_path: Path,
) -> None:
    """The slice embedded on Ray while one of its two workers is killed after the first
    parts are written: the job finishes with every vector, equal to the local engine's."""
    settings = _settings(slice_dir, tmp_path / "work", **RAY)
    folder = settings.compute_dir / "embed"
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            pids = _worker_pids()
            # midway: the actors are up and some batches are written
            if pids and folder.is_dir() and any(folder.rglob("*.parquet")):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    on_ray = item_embeddings(slice_data, settings, progress=False)
    killer.join(timeout=5)
    assert killed, "no Ray worker was seen to kill"
    assert on_ray.shape == local_vectors.shape
    assert np.abs(on_ray - local_vectors).max() <= 1e-5
    # every row came back (none is the zero padding row) and the parts were dropped after
    assert np.all(np.linalg.norm(on_ray[1:], axis=1) > 0.99)
    assert not any(folder.rglob("*.parquet"))
    with EmbeddingCache(settings.embedding_cache_dir) as cache:
        # one vector per distinct text: nothing lost, nothing stored twice
        texts = {renderer_for(settings).item_text(item) for item in slice_data.items.values()}
        assert cache.count() == len(texts)
    # a second run finds everything in the cache: no Ray job, same matrix
    again = item_embeddings(slice_data, settings, progress=False)
    assert np.array_equal(again, on_ray)


class _Upper:
    """A batch function with no model: what the resume logic sees of any job."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"key": batch["key"], "upper": np.array([str(t).upper() for t in batch["text"]])}


def _ship_this_module() -> None:
    from ray import cloudpickle

    # the workers cannot import this test module: its classes go by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_job_resumes_from_the_parts_of_a_killed_run(
    ray_cluster: Any, slice_dir: Path, tmp_path: Path
) -> None:
    _ship_this_module()
    settings = _settings(slice_dir, tmp_path / "work", **RAY)
    rows = pa.table({"key": [f"k{i:03d}" for i in range(120)], "text": ["abc"] * 120})
    job = BatchJob("check", "resume", "key", _Upper, batch_size=20, workers=1)
    # the interrupted run: its first half was written, then a part was cut short by the kill
    _, report = run_batches(job, rows.slice(0, 60), settings)
    assert report.computed == 60
    folder = settings.compute_dir / "check" / "resume"
    (folder / "cut-short.parquet").write_bytes(b"PAR1 truncated")
    table, report = run_batches(job, rows, settings)
    assert (report.resumed, report.computed, report.failed) == (60, 60, {})
    assert not (folder / "cut-short.parquet").exists()  # unreadable: deleted, redone
    assert sorted(table.column("key").to_pylist()) == rows.column("key").to_pylist()
    assert set(table.column("upper").to_pylist()) == {"ABC"}
    finish(job, settings)
    assert not folder.exists()


def test_bad_rows_are_counted_not_dropped(
    ray_cluster: Any, slice_dir: Path, tmp_path: Path
) -> None:
    """A function failing on some rows: they come back failed and counted, the rest done."""
    _ship_this_module()
    settings = _settings(slice_dir, tmp_path / "work", **RAY)
    rows = pa.table({"key": [f"k{i}" for i in range(40)], "text": ["x"] * 40})
    job = BatchJob("check", "bad-rows", "key", _FailsOnOdd, batch_size=8, workers=1)
    table, report = run_batches(job, rows, settings)
    assert sorted(report.failed) == sorted(f"k{i}" for i in range(1, 40, 2))
    assert set(report.failed.values()) == {"odd row"}
    assert report.computed == 20
    assert table.num_rows == 40


class _FailsOnOdd:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.array(["odd row" if int(k[1:]) % 2 else "" for k in batch["key"]], dtype=object)
        return {"key": batch["key"], "error": errors}


def test_chroma_server_filled_by_ray_workers(
    ray_cluster: Any,
    slice_dir: Path,
    slice_data: Dataset,
    local_vectors: np.ndarray,
    session_settings: Settings,
    chroma_server: str,
    tmp_path: Path,
) -> None:
    settings = _settings(
        slice_dir,
        tmp_path / "work",
        **RAY,
        **{
            "store.url": chroma_server,
            "store.collection": "ray-bulk",
            "store.batch_size": 300,
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
        },
    )
    index = ItemIndex(make_client(settings), settings, "sentence-transformers/all-MiniLM-L6-v2")
    report = index.index(slice_data, local_vectors, progress=False)
    assert report.count == len(slice_data.catalog)
    item = slice_data.catalog.ids[7]
    stored = index.vectors([item])[item]
    assert np.abs(stored - local_vectors[8]).max() <= 1e-6
    # idempotent: a second run finds everything stored and upserts nothing
    assert index.index(slice_data, local_vectors, progress=False).upserted == 0


def test_scores_identical_on_both_engines(
    ray_cluster: Any,
    slice_dir: Path,
    slice_data: Dataset,
    session_settings: Settings,
    tmp_path: Path,
) -> None:
    settings = _settings(
        slice_dir,
        tmp_path / "work",
        **{
            "train.epochs": 1,
            "train.hidden": 32,
            "train.max_len": 20,
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
            "compute.workers": 1,
        },
    )
    checkpoint = tmp_path / "ckpt"
    train_checkpoint(
        "sasrec-id", slice_data, settings, checkpoint, valid_fn=make_valid_fn(slice_data, settings)
    )
    from agent.service.core import RecBridgeService

    model = RecBridgeService.from_settings(settings, pipelines=[]).retriever(
        "sasrec-id", checkpoint=checkpoint
    )
    ids = slice_data.catalog.ids
    lines = []
    for n, user in enumerate(slice_data.split("test")):
        candidates = [ids[(n * 7 + k) % len(ids)] for k in range(30)] + ["NOT-AN-ITEM"]
        lines.append(
            json.dumps({"user_id": user.user_id, "history": user.history, "candidates": candidates})
        )
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps({"user_id": "u-bad", "history": "B0001"}))
    source = tmp_path / "candidates.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    local = score_file(model, source, local_out, batch_size=8, progress=False)
    ray_settings = settings.model_copy(
        update={"compute": settings.compute.model_copy(update={"engine": "ray"})}
    )
    on_ray = score_file_on_ray(
        model, ray_settings, source, ray_out, checkpoint=checkpoint, batch_size=8
    )
    assert ray_out.read_bytes() == local_out.read_bytes()
    assert (on_ray.lines, on_ray.ok, on_ray.errors) == (local.lines, local.ok, local.errors)
    assert on_ray.errors == 2


def _content(tree: Any) -> dict[str, Any]:
    """What a profile says (not how long it took or how often a request was retried)."""
    return {
        "profile": tree.profile.model_dump(),
        "domains": [d.profile.model_dump() for d in tree.domains],
    }


def test_profiles_equal_on_both_engines_through_a_failing_endpoint(
    ray_cluster: Any,
    vllm_server: Any,
    slice_data: Dataset,
    session_settings: Settings,
    slice_embeddings: np.ndarray,
    tmp_path: Path,
) -> None:
    """The same vLLM server profiles the same users locally and on Ray; on Ray it sits behind
    a proxy that answers 500 to the first requests: they are retried and counted, and the
    profiles come out the same."""
    users = _users(slice_data, 2)
    common = {
        "data.path": str(session_settings.data.path),
        "embedding.cache_dir": str(session_settings.embedding_cache_dir),
        "llm.backend": "openai",
        "llm.model": BASE,
        "llm.retries": 4,
        "llm.retry_backoff_s": 0.2,
        "llm.timeout_s": 300,
        **GROUNDED,
    }
    local_settings = load_settings(
        overrides={**common, "work_dir": str(tmp_path / "local"), "llm.url": vllm_server.url}
    )
    local = HierarchicalProfiler(
        make_backend(local_settings), slice_data, local_settings, embeddings=slice_embeddings
    ).profile_users(users)[0]
    with FaultServer(script=[Step("status", status=500)] * 3, upstream=vllm_server.url) as proxy:
        ray_settings = load_settings(
            overrides={
                **common,
                "work_dir": str(tmp_path / "ray"),
                "llm.url": proxy.url,
                "compute.engine": "ray",
                "compute.workers": 1,
                "compute.profile_batch": 2,
            }
        )
        profiler = HierarchicalProfiler(
            make_backend(ray_settings), slice_data, ray_settings, embeddings=slice_embeddings
        )
        on_ray, stats = profile_on_ray(profiler, users)
    assert [r.user_id for r in on_ray] == [u.user_id for u in users]
    assert all(r.ok for r in on_ray), [r.error for r in on_ray]
    assert stats.http_retries >= 3  # the injected 500s: retried and counted
    for mine, theirs in zip(local, on_ray, strict=True):
        assert mine.tree is not None and theirs.tree is not None
        assert _content(theirs.tree) == _content(mine.tree)


def test_profile_command_on_ray_then_from_the_cache(
    ray_cluster: Any,
    session_settings: Settings,
    slice_embeddings: np.ndarray,
    tmp_path: Path,
) -> None:
    """`recbridge profile` with compute.engine=ray (facts mode: no LLM): every user's tree in
    the output file, and a second run finds them all in the profile cache."""
    from typer.testing import CliRunner

    from agent.cli.main import app

    out = tmp_path / "profiles.jsonl"
    argv = [
        "--set", f"data.path={session_settings.data.path}",
        "--set", f"work_dir={tmp_path / 'work'}",
        "--set", f"embedding.cache_dir={session_settings.embedding_cache_dir}",
        "--set", "compute.engine=ray",
        "--set", "compute.profile_batch=2",
        "--set", "profile.mode=facts",
        "profile", "--split", "test", "--users", "5", "--no-store", "--out", str(out), "--json",
    ]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, argv)
    assert first.exit_code == 0, first.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 5
    assert all(r["ok"] and not r["cached"] and r["tree"]["mode"] == "facts" for r in rows)
    second = runner.invoke(app, argv)
    assert second.exit_code == 0, second.output
    again = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["user_id"] for r in again] == [r["user_id"] for r in rows]
    assert all(r["cached"] for r in again)
    assert [r["tree"]["profile"] for r in again] == [r["tree"]["profile"] for r in rows]
