"""Session fixtures for the HTTP API: real ``recbridge serve`` processes (uvicorn) on random
loopback ports, started once per test run, over the data slice.

- ``api_server``: the local LLM (SmolLM2 in-process), bearer keys required, small limits.
- ``fault_llm`` + ``fault_api_server``: the openai backend pointed at the loopback fault server
  (tests/llm_fault_server.py), which answers fast, slowly, with 500s, or dies mid-request;
  no keys; score fusion on, with all weight on the retriever (``rerank.fusion_weight=1``).
  Its tests own it (they kill the LLM and finally stop the API server).

Pulled into tests/integration/conftest.py by a star import.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.config import PROJECT_ROOT, Settings
from tests.llm_fault_server import FaultServer, Step

__all__ = [
    "API_KEY",
    "SERVED",
    "ApiServer",
    "RestartableFaultServer",
    "api_server",
    "fault_api_server",
    "fault_llm",
]

API_KEY = "test-key-7f3a"
SERVED = ["popularity", "text-knn", "popularity+verbalizer", "sasrec-id+listwise", "sasrec-id"]
FAULT_SERVED = ["popularity+listwise", "popularity"]
READY_TIMEOUT_S = 600.0  # a loaded 2-core box: imports, index, a short training, the LLM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    """A running ``recbridge serve`` process."""

    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log_path: Path
    key: str | None = None

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful: requests in flight finish), then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_api_server(
    settings: Settings, sets: dict[str, object], args: list[str], log_path: Path
) -> ApiServer:
    """``python -m agent.cli --set ... serve --port P ...``; returns once /healthz answers."""
    port = free_port()
    base = {
        "data.path": settings.data.path,
        "embedding.cache_dir": settings.embedding_cache_dir,
        **sets,
    }
    argv = [sys.executable, "-m", "agent.cli"]
    for key, value in base.items():
        argv += ["--set", f"{key}={value}"]
    argv += ["serve", "--host", "127.0.0.1", "--port", str(port), *args]
    sink = log_path.open("wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env)
    server = ApiServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"recbridge serve exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            httpx.get(f"{server.url}/healthz", timeout=5)
            return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            tail = server.log()[-3000:]
            pytest.fail(f"recbridge serve not up in {READY_TIMEOUT_S:.0f}s:\n{tail}")
        time.sleep(0.5)


def _common_sets(work: Path, llm_model_dir: Path) -> dict[str, object]:
    return {
        "work_dir": work,
        "llm.model_dir": llm_model_dir,
        "llm.threads": 1,
        "rerank.top_n": 5,
        "train.epochs": 2,
        "train.hidden": 32,
        "train.max_len": 20,
        "train.threads": 1,
        "serve.max_history": 50,
        "serve.max_candidates": 30,
        "serve.max_top_k": 20,
        "serve.max_body_bytes": 65536,
        # The profile tests' small profiles: few, short LLM calls.
        "profile.min_items_for_clusters": 1000,
        "profile.max_groups": 1,
        "profile.chunk_size": 4,
        "profile.group_max_tokens": 24,
        "profile.profile_max_tokens": 64,
        "profile.max_list_items": 2,
        "profile.summary_max_chars": 80,
        "profile.phrase_max_chars": 20,
        "profile.grounded_max_tokens": 64,
    }


@pytest.fixture(scope="session")
def api_server(
    session_settings: Settings,
    slice_embeddings: np.ndarray,  # embeds the slice once, into the shared cache
    llm_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    """The API with the local LLM; sasrec-id is trained on the slice at start (seconds)."""
    root = tmp_path_factory.mktemp("api-server")
    keys = root / "keys.txt"
    keys.write_text(f"# test keys\n{API_KEY}\n", encoding="utf-8")
    sets = {**_common_sets(root / "work", llm_model_dir), "llm.timeout_s": 900}
    args = [arg for name in SERVED for arg in ("--pipeline", name)]
    args += ["--train", "--api-keys-file", str(keys), "--backend", "local"]
    server = start_api_server(session_settings, sets, args, root / "server.log")
    server.key = API_KEY
    try:
        yield server
    finally:
        server.stop()


class RestartableFaultServer(FaultServer):
    """The fault server on a fixed port, so that a "restarted LLM server" comes back where the
    API expects it."""

    def __init__(self, port: int = 0, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if port:
            self._httpd.server_close()
            self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
            self._httpd.daemon_threads = True
            self._httpd.block_on_close = False
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
            )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])


@dataclass
class FaultLLM:
    """The current fault server (``restart`` replaces a stopped one on the same port)."""

    server: RestartableFaultServer

    def restart(self) -> RestartableFaultServer:
        port = self.server.port
        self.server.stop()
        self.server = RestartableFaultServer(port)
        self.server.__enter__()
        return self.server


@pytest.fixture(scope="session")
def fault_llm() -> Iterator[FaultLLM]:
    server = RestartableFaultServer(default=Step())
    with server:
        holder = FaultLLM(server)
        try:
            yield holder
        finally:
            holder.server.stop()


@pytest.fixture(scope="session")
def fault_api_server(
    session_settings: Settings,
    slice_embeddings: np.ndarray,  # the slice embedded once
    llm_model_dir: Path,
    fault_llm: FaultLLM,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    """The API on the openai backend against the fault server: LLM errors show fast (no
    retries, 20 s per request); at most 2 requests in flight."""
    root = tmp_path_factory.mktemp("fault-api-server")
    sets = {
        **_common_sets(root / "work", llm_model_dir),
        "llm.retries": 0,
        "llm.model": "fault-model",
        "serve.llm_timeout_s": 20,
        "serve.max_concurrency": 2,
        "serve.graceful_timeout_s": 20,
        "rerank.constrained": False,
        # The LLM's order fused with the retriever's, all weight on the retriever: a scripted
        # answer must not change the order (test_api_faults checks the fusion is applied).
        "rerank.fusion_weight": 1.0,
    }
    args = [arg for name in FAULT_SERVED for arg in ("--pipeline", name)]
    args += ["--backend", "openai", "--url", fault_llm.server.url]
    server = start_api_server(session_settings, sets, args, root / "server.log")
    try:
        yield server
    finally:
        server.stop()
