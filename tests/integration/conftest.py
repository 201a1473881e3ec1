"""Session fixtures for real services: the packaged MiniLM, slice embeddings, a Chroma server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.items.embedder import MiniLMEmbedder
from agent.items.embeddings import item_embeddings
from tests.integration.api_fixtures import *  # noqa: F403  (HTTP API session servers)
from tests.integration.browser_fixtures import *  # noqa: F403  (a headless Chromium)
from tests.integration.llm_fixtures import *  # noqa: F403  (LLM/vLLM session fixtures)
from tests.integration.ray_fixtures import *  # noqa: F403  (one local Ray cluster)

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
CHROMA_BIN = Path(
    shutil.which("chroma") or Path(__file__).resolve().parents[2] / ".venv/bin/chroma"
)


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    """The packaged MiniLM, loaded once per process (the loader is cached)."""
    embedder = MiniLMEmbedder()
    embedder.embed(["warm up"])
    return embedder


@pytest.fixture(scope="session")
def session_settings(
    slice_dir: Path, embedding_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return load_settings(
        overrides={
            "data.path": str(slice_dir),
            "work_dir": str(tmp_path_factory.mktemp("session-work")),
            "embedding.cache_dir": str(embedding_cache),
        }
    )


@pytest.fixture(scope="session")
def slice_embeddings(
    slice_data: Dataset, session_settings: Settings, minilm: MiniLMEmbedder
) -> np.ndarray:
    """MiniLM vectors of the slice, through the session cache (embedded once per session)."""
    return item_embeddings(slice_data, session_settings, progress=False, embedder=minilm)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_chroma_server(root: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``chroma run`` server on a free loopback port: (URL, process); stopped on exit."""
    if not CHROMA_BIN.exists():
        pytest.skip("the chroma console script is not installed")
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(CHROMA_BIN),
            "run",
            "--path",
            str(root / "db"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"chroma server exited with {proc.returncode}: "
                    f"{(root / 'server.log').read_text(errors='replace')[-2000:]}"
                )
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("chroma server did not answer its heartbeat within 60 s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Chroma server for the session; yields its URL."""
    with running_chroma_server(tmp_path_factory.mktemp("chroma-server")) as (url, _):
        yield url


@pytest.fixture(params=["embedded", "server"])
def store_settings(
    request: pytest.FixtureRequest, session_settings: Settings, tmp_path: Path
) -> Settings:
    """Session settings with a fresh store: an embedded folder, or the shared server with a
    fresh collection name (the server outlives the test)."""
    overrides: dict[str, object] = {
        "data.path": str(session_settings.data.path),
        "work_dir": str(tmp_path / "work"),
        "embedding.cache_dir": str(session_settings.embedding_cache_dir),
        "store.collection": f"t{uuid.uuid4().hex[:10]}",
    }
    if request.param == "server":
        overrides["store.url"] = request.getfixturevalue("chroma_server")
    return load_settings(overrides=overrides)
