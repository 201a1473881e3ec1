"""`recbridge index` killed after its first batch resumes: nothing duplicated, nothing lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.store.chroma_store import ItemIndex, make_client
from tests.integration.conftest import running_chroma_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _index_cmd(settings: Settings, slice_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "agent.cli.main",
        "--log-level", "DEBUG",
        "--set", f"work_dir={settings.work_dir}",
        "--set", f"embedding.cache_dir={settings.embedding_cache_dir}",
        "--set", "store.batch_size=20",  # many small batches: room to kill in between
        "index", "--data", str(slice_dir),
    ]  # fmt: skip


def test_killed_index_run_resumes(
    tmp_path: Path,
    slice_dir: Path,
    slice_data: Dataset,
    slice_embeddings: np.ndarray,  # fills the embedding cache: the runs only index
    session_settings: Settings,
) -> None:
    settings = load_settings(
        overrides={
            "work_dir": str(tmp_path / "work"),
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
        }
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    cmd = _index_cmd(settings, slice_dir)
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert first.stderr is not None
    deadline = time.monotonic() + 120
    try:
        for line in first.stderr:
            if "upserted 20/" in line:  # the first batch is in the store
                os.kill(first.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    n = len(slice_data.catalog)
    found = re.search(r"(\d+) stored, (\d+) to upsert, 0 to delete", second.stderr)
    assert found, second.stderr[-3000:]
    stored, todo = int(found[1]), int(found[2])
    assert 0 < stored < n  # it really was killed halfway ...
    assert stored + todo == n  # ... and the rerun upserts only the rest

    index = ItemIndex(make_client(settings), settings, "sentence-transformers/all-MiniLM-L6-v2")
    assert index.count() == n
    ids = index.collection.get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == n and set(ids) == set(slice_data.catalog.ids)
    vectors = index.vectors(slice_data.catalog.ids)
    for iid, dense in slice_data.catalog.index.items():
        assert np.allclose(vectors[iid], slice_embeddings[dense], atol=1e-6)


def test_chroma_server_killed_mid_index_is_one_clear_error(
    tmp_path: Path,
    slice_dir: Path,
    slice_embeddings: np.ndarray,  # fills the embedding cache: the run only indexes
    session_settings: Settings,
) -> None:
    """The server dies after the first batch: exit 2 with one line naming the server, how far
    it got and how to resume; no traceback."""
    settings = load_settings(
        overrides={
            "work_dir": str(tmp_path / "work"),
            "embedding.cache_dir": str(session_settings.embedding_cache_dir),
        }
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with running_chroma_server(tmp_path / "server") as (url, server):
        cmd = _index_cmd(settings, slice_dir)
        cmd[cmd.index("index") : cmd.index("index")] = ["--set", f"store.url={url}"]
        run = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert run.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        try:
            for line in run.stderr:
                lines.append(line)
                if "upserted 20/" in line:  # the first batch is in; the server goes
                    server.kill()
                    server.wait()
                    break
                assert time.monotonic() < deadline, "".join(lines[-20:])
            lines += run.stderr.readlines()  # the rest, up to its exit
            run.wait(timeout=120)
        finally:
            run.kill()
    stderr = "".join(lines)
    assert run.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    error = " ".join(stderr[stderr.index("error:") :].split())
    assert f"Chroma at {url} failed during upsert after 20 of" in error
    assert "run `recbridge index` again to resume" in error
