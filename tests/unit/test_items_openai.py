"""OpenAIEmbedder against real loopback HTTP servers: MiniLM vectors, faults, timeouts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import load_settings
from agent.data.schema import Dataset, Item
from agent.items.embedder import EmbeddingError, MiniLMEmbedder, OpenAIEmbedder, make_embedder
from agent.items.embeddings import item_embeddings

# handler(request_number, body) -> (status, json payload or None, delay seconds)
Behaviour = Callable[[int, dict[str, Any]], tuple[int, Any, float]]


class Server:
    def __init__(self, behaviour: Behaviour) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                status, payload, delay = behaviour(len(server.requests), body)
                time.sleep(delay)
                data = json.dumps(payload or {"error": {"message": "boom"}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve() -> Iterator[Callable[[Behaviour], Server]]:
    servers: list[Server] = []

    def start(behaviour: Behaviour) -> Server:
        servers.append(Server(behaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def openai_payload(vectors: np.ndarray, model: str) -> dict[str, Any]:
    # OpenAI's shape; rows deliberately reversed: clients must order by "index".
    rows = [
        {"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
        for i, v in enumerate(vectors)
    ][::-1]
    return {
        "object": "list",
        "data": rows,
        "model": model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


def fixed_vectors(body: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(len(body["input"]))
    return rng.normal(size=(len(body["input"]), 8)) * 3.0  # not normalised on purpose


def ok(n: int, body: dict[str, Any]) -> tuple[int, Any, float]:
    return 200, openai_payload(fixed_vectors(body), body["model"]), 0.0


def client(server: Server, **kw: Any) -> OpenAIEmbedder:
    opts: dict[str, Any] = {
        "batch_size": 3,
        "timeout_s": 5.0,
        "retries": 2,
        "retry_backoff_s": 0.01,
        "api_key": "sk-test",
    }
    opts.update(kw)
    return OpenAIEmbedder(server.url, "emb-model", **opts)


@pytest.mark.integration
def test_serves_real_minilm_vectors(serve: Callable[[Behaviour], Server]) -> None:
    minilm = MiniLMEmbedder()
    minilm.embed(["warm up"])  # load before the server thread needs it

    def real(n: int, body: dict[str, Any]) -> tuple[int, Any, float]:
        vectors = minilm.model.encode(body["input"], convert_to_numpy=True)
        return 200, openai_payload(np.asarray(vectors), body["model"]), 0.0

    server = serve(real)
    texts = ["Cast Iron Skillet", "Green Tea", "Olive Oil 1L", "Chef's Knife", "Whisk", "Salt", "x"]
    got = client(server).embed(texts)
    assert got.dtype == np.float32 and got.shape == (7, 384)
    assert np.allclose(got, minilm.embed(texts), atol=1e-5)
    assert [len(r["body"]["input"]) for r in server.requests] == [3, 3, 1]  # batching
    assert {r["path"] for r in server.requests} == {"/v1/embeddings"}
    assert server.requests[0]["auth"] == "Bearer sk-test"
    assert server.requests[0]["body"]["model"] == "emb-model"


def test_vectors_are_normalised_and_dim_is_probed(serve: Callable[[Behaviour], Server]) -> None:
    emb = client(serve(ok))
    assert emb.dim == 8
    out = emb.embed(["a", "b", "c", "d"])
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert emb.model_id == "openai/emb-model"


def test_500_then_200_is_retried(serve: Callable[[Behaviour], Server]) -> None:
    server = serve(lambda n, body: (500, None, 0.0) if n == 1 else ok(n, body))
    out = client(server).embed(["a", "b"])
    assert out.shape == (2, 8)
    assert len(server.requests) == 2


def test_always_500_fails_clearly(serve: Callable[[Behaviour], Server]) -> None:
    server = serve(lambda n, body: (500, None, 0.0))
    with pytest.raises(EmbeddingError) as info:
        client(server, retries=2).embed(["a"])
    message = str(info.value)
    assert f"{server.url}/embeddings" in message and "500" in message and "3 attempts" in message
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(serve: Callable[[Behaviour], Server]) -> None:
    server = serve(lambda n, body: (400, {"error": {"message": "bad model"}}, 0.0))
    with pytest.raises(EmbeddingError, match=r"HTTP 400.*bad model"):
        client(server).embed(["a"])
    assert len(server.requests) == 1


def test_slow_server_times_out(serve: Callable[[Behaviour], Server]) -> None:
    server = serve(lambda n, body: (*ok(n, body)[:2], 3.0))
    started = time.perf_counter()
    with pytest.raises(EmbeddingError, match="timed out"):
        client(server, timeout_s=0.3, retries=1).embed(["a"])
    assert time.perf_counter() - started < 2.5  # two 0.3 s attempts, not the 3 s answer
    assert len(server.requests) == 2


def test_connection_refused_names_the_url() -> None:
    emb = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", retries=1, retry_backoff_s=0.01)
    with pytest.raises(EmbeddingError, match=r"127\.0\.0\.1:9/v1/embeddings.*connection"):
        emb.embed(["a"])


def test_item_embeddings_through_openai_backend(
    serve: Callable[[Behaviour], Server], tmp_path: Path
) -> None:
    server = serve(ok)
    settings = load_settings(
        overrides={
            "work_dir": str(tmp_path),
            "embedding.backend": "openai",
            "embedding.url": server.url,
            "embedding.model": "emb-model",
        }
    )
    assert isinstance(make_embedder(settings), OpenAIEmbedder)
    items = {f"I{i}": Item(f"I{i}", "food", f"item {i}") for i in range(5)}
    data = Dataset(name="tiny", items=items, users=[])
    first = item_embeddings(data, settings, progress=False)
    calls = len(server.requests)
    again = item_embeddings(data, settings, progress=False)
    assert len(server.requests) == calls  # cached: the server is not asked again
    assert np.array_equal(first, again) and first.shape == (6, 8)
