"""Session fixtures for the LLM layer: the prepared model folder, a small trained LoRA adapter,
and ONE real vLLM OpenAI server (from `make vllm-env`) serving both, started once per session.

Slow artefacts are cached across sessions (and locked against parallel runs): the model folder
is the default `recbridge llm prepare` location, the adapter lives under runs/test-cache keyed by
its training config. Pulled into tests/integration/conftest.py by a star import.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import PROJECT_ROOT
from agent.llm.local_backend import LocalBackend
from agent.llm.model_files import folder_lock, prepare_model
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.vllm_server import VLLMServer
from finetune.lora import LoraTrainConfig, domain_examples, train_lora
from tests.conftest import SHARED_DATA

__all__ = [
    "ADAPTER",
    "BASE",
    "RERANK_ADAPTER",
    "llm_model_dir",
    "local_llm",
    "lora_adapter",
    "openai_llm",
    "pytest_collection_modifyitems",
    "rerank_adapter",
    "vllm_server",
]

BASE = "smollm2-135m-instruct"
ADAPTER = "json-domain"
RERANK_ADAPTER = "verbalizer-test"  # a reranker adapter trained by finetune/ on the slice
TEST_CACHE = Path(os.environ.get("RECBRIDGE_TEST_CACHE", str(PROJECT_ROOT / "runs" / "test-cache")))
MODEL_DIR = Path(
    os.environ.get("RECBRIDGE_TEST_MODEL_DIR", str(PROJECT_ROOT / "runs" / "models" / BASE))
)
VLLM_PYTHON = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
LORA = LoraTrainConfig(steps=10, batch_size=4, lr=2e-3, seed=7, threads=1)
TRAIN_ITEMS = 32


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that kill the shared vLLM server run last, so every other test still has it."""
    items.sort(key=lambda item: item.get_closest_marker("kills_vllm") is not None)


@pytest.fixture(scope="session")
def llm_model_dir() -> Path:
    """The plain model folder, converted from the packaged GGUF on first use (~20-60 s)."""
    return prepare_model(MODEL_DIR).path


def _training_pairs() -> list[tuple[str, str]]:
    """Real (title, domain) pairs: every 500th item of the shared catalogue."""
    items = SHARED_DATA / "items.jsonl"
    if not items.is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    with items.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in itertools.islice(fh, 0, None, 500)]
    return [(r["title"][:80], r["domain"]) for r in rows][:TRAIN_ITEMS]


@pytest.fixture(scope="session")
def lora_adapter(llm_model_dir: Path) -> Path:
    """A LoRA adapter (r=8, q/k/v/o) trained a few steps to answer ``{"domain": ...}``."""
    pairs = _training_pairs()
    key = hashlib.sha256(
        json.dumps([LORA.model_dump(exclude={"threads"}), pairs, str(llm_model_dir)]).encode()
    ).hexdigest()[:12]
    dest = TEST_CACHE / "adapters" / f"{ADAPTER}-{key}"
    with folder_lock(dest):
        if not (dest / "adapter_config.json").is_file():
            tmp = dest.with_name(dest.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            train_lora(llm_model_dir, domain_examples(pairs), tmp, LORA)
            tmp.rename(dest)
    return dest


@pytest.fixture(scope="session")
def rerank_adapter(llm_model_dir: Path, slice_dir: Path) -> Path:
    """A verbalizer adapter (r=8, all linear layers) trained by finetune/'s trainer on random
    examples of the slice's train rows, with its card (cached like the JSON adapter)."""
    from tests.integration.finetune_helpers import SMALL_ADAPTER_VERSION, train_small_adapter

    key = hashlib.sha256(f"{llm_model_dir}|{SMALL_ADAPTER_VERSION}".encode()).hexdigest()[:12]
    dest = TEST_CACHE / "adapters" / f"{RERANK_ADAPTER}-{key}"
    with folder_lock(dest):
        if not (dest / "adapter_card.json").is_file():
            tmp = dest.with_name(dest.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            train_small_adapter(slice_dir, llm_model_dir, tmp)
            tmp.rename(dest)
    return dest


@pytest.fixture(scope="session")
def vllm_server(
    llm_model_dir: Path,
    lora_adapter: Path,
    rerank_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VLLMServer]:
    """The real vLLM OpenAI server on a free loopback port, base model + the adapter, fp32."""
    if not VLLM_PYTHON.is_file():
        message = f"{VLLM_PYTHON} missing: run `make vllm-env`"
        if os.environ.get("RECBRIDGE_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    server = VLLMServer(
        python=VLLM_PYTHON,
        model_dir=llm_model_dir,
        served_name=BASE,
        adapters={ADAPTER: lora_adapter, RERANK_ADAPTER: rerank_adapter},
        port=0,
        dtype="float32",  # token-for-token agreement with the fp32 local backend
        cache_dir=TEST_CACHE / "vllm-cache",
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
        ready_timeout_s=600.0,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def local_llm(llm_model_dir: Path, lora_adapter: Path) -> LocalBackend:
    # One torch thread (for its calls only): robust on a shared 2-core box (see local_backend).
    backend = LocalBackend(
        llm_model_dir, BASE, adapters={ADAPTER: lora_adapter}, threads=1, timeout_s=300
    )
    backend.load()
    return backend


@pytest.fixture()
def openai_llm(vllm_server: VLLMServer) -> OpenAIBackend:
    return OpenAIBackend(vllm_server.url, BASE, timeout_s=120.0, retries=1, concurrency=4)
