"""The shared backend machinery: retries/backoff, the concurrency limit, batches that survive
failures. A scripted in-process backend stands in for the model (no HTTP here)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from agent.llm.backend import ErrorKind, LLMBackend, LLMError
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult


class Scripted(LLMBackend):
    """Fails each prompt with the listed kinds first, then answers; records concurrency."""

    name = "scripted"

    def __init__(self, failures: dict[str, list[ErrorKind]] | None = None, **kw: object) -> None:
        super().__init__(**{"retries": 2, "retry_backoff_s": 0.001, **kw})  # type: ignore[arg-type]
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def model(self) -> str:
        return "scripted-model"

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        prompt = req.messages[-1].content
        self.calls.append(prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            pending = self.failures.get(prompt)
            if pending:
                raise LLMError(pending.pop(0), "scripted", model=self.model)
            return GenerationResult(
                text=prompt.upper(),
                prompt_tokens=1,
                completion_tokens=1,
                finish_reason="stop",
                latency_s=0.01,
                backend=self.name,
                model=req.adapter or self.model,
            )
        finally:
            self.in_flight -= 1


def _req(prompt: str) -> GenerationRequest:
    return GenerationRequest.from_prompt(prompt, max_tokens=4)


def test_request_defaults_are_greedy_and_validated() -> None:
    req = GenerationRequest.from_prompt("hi", system="be brief")
    assert req.temperature == 0.0 and req.adapter is None and req.json_schema is None
    assert req.messages == [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
    ]
    with pytest.raises(ValidationError):
        GenerationRequest.from_prompt("hi", max_tokens=0)
    assert req.logprob_k == 0
    assert GenerationRequest.from_prompt("hi", logprobs=True).logprob_k == 1
    assert GenerationRequest.from_prompt("hi", top_logprobs=5).logprob_k == 5
    with pytest.raises(ValidationError):
        ChatMessage(role="robot", content="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["timeout", "server_error", "connection"])
def test_retryable_kinds_are_retried(kind: ErrorKind) -> None:
    backend = Scripted({"a": [kind, kind]})
    assert backend.generate(_req("a")).text == "A"
    assert backend.calls == ["a", "a", "a"]


def test_retries_stop_after_the_limit_with_the_attempt_count() -> None:
    backend = Scripted({"a": ["server_error"] * 5})
    with pytest.raises(LLMError) as info:
        backend.generate(_req("a"))
    assert info.value.attempts == 3 and len(backend.calls) == 3


def test_bad_requests_are_not_retried() -> None:
    backend = Scripted({"a": ["bad_request"]})
    with pytest.raises(LLMError) as info:
        backend.generate(_req("a"))
    assert info.value.kind == "bad_request" and backend.calls == ["a"]


def test_batch_keeps_order_good_results_and_error_slots() -> None:
    backend = Scripted({"b": ["bad_request"], "d": ["timeout"] * 9})
    results = backend.generate_batch([_req(p) for p in "abcde"])
    assert [r.text if isinstance(r, GenerationResult) else r.kind for r in results] == [
        "A",
        "bad_request",
        "C",
        "timeout",
        "E",
    ]


def test_concurrency_limit_is_respected() -> None:
    backend = Scripted(concurrency=8)
    backend.generate_batch([_req(str(i)) for i in range(12)], concurrency=3)
    assert backend.max_in_flight == 3
    backend.max_in_flight = 0
    backend.generate_batch([_req(str(i)) for i in range(12)])  # the backend's own limit
    assert backend.max_in_flight == 8


def test_async_api_inside_a_running_loop() -> None:
    async def main() -> list[GenerationResult | LLMError]:
        backend = Scripted()
        first = await backend.agenerate(_req("x"))
        return [first, *await backend.agenerate_batch([_req("y")])]

    results = asyncio.run(main())
    assert [r.text for r in results if isinstance(r, GenerationResult)] == ["X", "Y"]


def test_error_message_names_kind_status_url_and_model() -> None:
    err = LLMError("server_error", "boom", url="http://h/v1", model="m", status=502, attempts=3)
    assert str(err) == "LLM server_error HTTP 502 after 3 attempts (http://h/v1 model=m): boom"
    assert err.retryable and not LLMError("bad_request", "x").retryable
