"""The OpenAI backend against real loopback HTTP servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from agent.llm.backend import LLMError
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.types import GenerationRequest, GenerationResult
from tests.llm_fault_server import FaultServer, Step

FAST = {"timeout_s": 2.0, "retries": 2, "retry_backoff_s": 0.01, "concurrency": 4}


def _req(prompt: str = "hello", **kw: object) -> GenerationRequest:
    return GenerationRequest.from_prompt(prompt, max_tokens=8, **kw)  # type: ignore[arg-type]


def _backend(url: str, **kw: object) -> OpenAIBackend:
    return OpenAIBackend(url, "fault-model", **{**FAST, **kw})  # type: ignore[arg-type]


def test_ok_reads_text_usage_and_sends_the_openai_fields() -> None:
    with FaultServer() as srv:
        result = _backend(srv.url).generate(_req("hi", seed=7, stop=["\n"], adapter="lora-a"))
    assert result.text == "echo: hi"
    assert (result.prompt_tokens, result.completion_tokens) == (5, 3)
    assert result.backend == "openai" and result.model == "lora-a"
    body = srv.bodies[0]
    assert body["model"] == "lora-a"  # the adapter is chosen by the model name
    assert body["temperature"] == 0.0 and body["max_tokens"] == 8 and body["seed"] == 7
    assert body["stop"] == ["\n"] and "response_format" not in body


def test_top_logprobs_are_requested_and_parsed() -> None:
    with FaultServer() as srv:
        result = _backend(srv.url).generate(_req(top_logprobs=3))
    assert srv.bodies[0]["logprobs"] is True and srv.bodies[0]["top_logprobs"] == 3
    assert result.top_logprobs == [{"t0": -0.5, "t1": -1.0, "t2": -1.5}] * 2


def test_500_then_200_succeeds_on_retry() -> None:
    with FaultServer(script=[Step("status", 500)]) as srv:
        result = _backend(srv.url).generate(_req())
    assert result.text == "echo: hello"
    assert srv.requests == 2


def test_always_500_raises_server_error_after_all_retries() -> None:
    with FaultServer(default=Step("status", 503)) as srv, pytest.raises(LLMError) as info:
        _backend(srv.url).generate(_req())
    err = info.value
    assert err.kind == "server_error" and err.status == 503
    assert err.attempts == 3 and srv.requests == 3  # 1 + retries
    assert srv.url in str(err) and "fault-model" in str(err)


def test_429_is_retried_and_honours_retry_after() -> None:
    with FaultServer(script=[Step("status", 429, headers=(("Retry-After", "0.3"),))]) as srv:
        started = time.perf_counter()
        result = _backend(srv.url).generate(_req())
        waited = time.perf_counter() - started
    assert result.text == "echo: hello" and srv.requests == 2
    assert waited >= 0.3


def test_4xx_is_a_bad_request_and_not_retried() -> None:
    with FaultServer(default=Step("status", 404)) as srv, pytest.raises(LLMError) as info:
        _backend(srv.url).generate(_req(adapter="no-such-adapter"))
    assert info.value.kind == "bad_request" and info.value.status == 404
    assert srv.requests == 1


def test_slow_server_past_the_timeout_is_a_timeout_error() -> None:
    with FaultServer(default=Step("sleep", seconds=1.5)) as srv:
        started = time.perf_counter()
        with pytest.raises(LLMError) as info:
            _backend(srv.url, timeout_s=0.3, retries=1).generate(_req())
        elapsed = time.perf_counter() - started
    assert info.value.kind == "timeout" and info.value.attempts == 2
    assert elapsed < 1.5  # gave up at the timeout, did not wait for the server


def test_dropped_connection_is_retried() -> None:
    with FaultServer(script=[Step("close")]) as srv:
        result = _backend(srv.url).generate(_req())
    assert result.text == "echo: hello" and srv.requests == 2


def test_server_down_is_a_connection_error_after_retries() -> None:
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = _backend(f"http://127.0.0.1:{port}/v1", retries=2, retry_backoff_s=0.05)
    started = time.perf_counter()
    with pytest.raises(LLMError) as info:
        backend.generate(_req())
    assert info.value.kind == "connection" and info.value.attempts == 3
    assert time.perf_counter() - started >= 0.05 + 0.1  # the backoff doubled between tries


def test_schema_request_degrades_when_the_server_rejects_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with FaultServer(default=Step("reject_format", 400)) as srv:
        result = _backend(srv.url).generate(_req(json_schema=schema))
    assert result.text == "echo: hello" and result.schema_enforced is False
    first, second = srv.bodies
    assert first["response_format"]["type"] == "json_schema"
    assert first["response_format"]["json_schema"]["schema"] == schema
    assert "response_format" not in second


def test_schema_request_is_marked_enforced_when_accepted() -> None:
    with FaultServer() as srv:
        result = _backend(srv.url).generate(_req(json_schema={"type": "object"}))
    assert result.schema_enforced is True


def test_batch_keeps_good_results_when_some_items_fail() -> None:
    steps = {"bad-500": Step("status", 500), "bad-slow": Step("sleep", seconds=1.0)}
    prompts = ["good-1", "bad-500", "good-2", "bad-slow", "good-3"]
    with FaultServer(by_prompt=steps) as srv:
        backend = _backend(srv.url, timeout_s=0.3, retries=1)
        results = backend.generate_batch([_req(p) for p in prompts], concurrency=2)
    assert len(results) == len(prompts)
    for prompt, result in zip(prompts, results, strict=True):
        if prompt.startswith("good"):
            assert isinstance(result, GenerationResult) and result.text == f"echo: {prompt}"
        else:
            assert isinstance(result, LLMError)
    assert [r.kind for r in results if isinstance(r, LLMError)] == ["server_error", "timeout"]


def test_server_gone_mid_batch_keeps_what_was_computed() -> None:
    """The loopback server stops after about three answers (the real-vLLM version of this is in
    tests/integration/test_llm_vllm.py); later items fail as connection errors, in order."""
    srv = FaultServer().__enter__()
    backend = _backend(srv.url, retries=1, retry_backoff_s=0.01, concurrency=1)

    async def run() -> list[GenerationResult | LLMError]:
        async def stop_after_three() -> None:
            while srv.requests < 3:
                await asyncio.sleep(0.005)
            await asyncio.to_thread(srv.stop)

        stopper = asyncio.create_task(stop_after_three())
        try:
            return await backend.agenerate_batch([_req(f"p{i}") for i in range(6)], 1)
        finally:
            await stopper
            await backend.aclose()

    results = asyncio.run(run())
    good = [r for r in results if isinstance(r, GenerationResult)]
    assert [r.text for r in good] == [f"echo: p{i}" for i in range(len(good))]
    # The stopper polls, so on a loaded machine an answer or two more may get through before
    # the server is gone; what matters is that answers are kept in order and the rest fail.
    assert 2 <= len(good) < 6
    assert all(isinstance(r, LLMError) and r.kind == "connection" for r in results[len(good) :])


def test_list_models() -> None:
    with FaultServer() as srv:
        assert _backend(srv.url).list_models() == [
            {"id": "fault-model", "parent": None, "root": None}
        ]
