"""Any OpenAI-compatible chat server (vLLM in production) over httpx.

A LoRA adapter is chosen by the request's ``model`` field, as vLLM serves adapters by name.
Schema-constrained decoding uses the OpenAI ``response_format`` form (``json_schema``), which
vLLM 0.32 maps to its structured outputs; vLLM dropped the old ``guided_json`` extra (it is
silently ignored now), so it is not sent. A server that rejects ``response_format`` gets the
request again without it, and the result says the schema was not enforced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from agent.llm.backend import LLMBackend, LLMError
from agent.llm.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


class _TopLogprob(BaseModel):
    token: str
    logprob: float


class _TokenLogprob(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[_TopLogprob] = []


class _Logprobs(BaseModel):
    content: list[_TokenLogprob] | None = None


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ChatResponse(BaseModel):
    """The part of an OpenAI chat completion we read; validated at the boundary."""

    model: str = ""
    choices: list[_Choice]
    usage: _Usage | None = None


class _ModelCard(BaseModel):
    id: str
    parent: str | None = None
    root: str | None = None


class _ModelList(BaseModel):
    data: list[_ModelCard]


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _rejects_response_format(resp: httpx.Response) -> bool:
    return resp.status_code in (400, 422) and "response_format" in resp.text


class OpenAIBackend(LLMBackend):
    name = "openai"

    def __init__(self, url: str, model: str, api_key: str = "local", **kw: Any) -> None:
        super().__init__(**kw)
        self.url = url.rstrip("/")
        self._model = model
        self.api_key = api_key
        # One client per event loop: httpx async clients cannot cross loops.
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> str:
        return self._model

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                base_url=self.url,
                timeout=httpx.Timeout(self.timeout_s),
                headers={"Authorization": f"Bearer {self.api_key}"},
                # Enough pooled connections for the concurrency limit; no keepalive surprises.
                limits=httpx.Limits(max_connections=self.concurrency * 2),
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None
        self._client_loop = None

    def _payload(self, req: GenerationRequest, with_schema: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": req.adapter or self._model,
            "messages": [m.model_dump() for m in req.messages],
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if req.stop:
            body["stop"] = req.stop
        if req.logprob_k:
            body["logprobs"] = True
            body["top_logprobs"] = req.logprob_k
        if with_schema and req.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": req.json_schema, "strict": True},
            }
        return body

    async def _post(self, path: str, body: dict[str, Any], model: str) -> httpx.Response:
        url = f"{self.url}{path}"
        try:
            # A total deadline: httpx's timeout is per read, a trickling server could evade it.
            async with asyncio.timeout(self.timeout_s):
                return await self._http().post(path, json=body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise LLMError(
                "timeout", f"no answer within {self.timeout_s:g}s", url=url, model=model
            ) from exc
        except httpx.TransportError as exc:
            raise LLMError(
                "connection", f"{type(exc).__name__}: {exc}", url=url, model=model
            ) from exc

    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        model = req.adapter or self._model
        url = f"{self.url}/chat/completions"
        with_schema = req.json_schema is not None
        started = time.perf_counter()
        resp = await self._post("/chat/completions", self._payload(req, with_schema), model)
        if with_schema and _rejects_response_format(resp):
            # Per request, not remembered: a rejected schema must not switch it off for others.
            log.warning("%s rejects response_format; decoding without the schema", self.url)
            with_schema = False
            resp = await self._post("/chat/completions", self._payload(req, False), model)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise LLMError(
                "server_error",
                resp.text[:300],
                url=url,
                model=model,
                status=resp.status_code,
                retry_after_s=_retry_after(resp),
            )
        if resp.status_code >= 400:
            raise LLMError(
                "bad_request", resp.text[:300], url=url, model=model, status=resp.status_code
            )
        try:
            parsed = _ChatResponse.model_validate_json(resp.content)
            choice = parsed.choices[0]
        except (ValidationError, IndexError) as exc:
            # A 200 that is not a chat completion: a broken proxy or server; worth a retry.
            raise LLMError(
                "server_error", f"unreadable response: {resp.text[:200]}", url=url, model=model
            ) from exc
        top: list[dict[str, float]] = []
        if req.logprob_k and choice.logprobs and choice.logprobs.content:
            top = [
                {t.token: t.logprob for t in pos.top_logprobs} for pos in choice.logprobs.content
            ]
        usage = parsed.usage or _Usage()
        return GenerationResult(
            text=choice.message.content or "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            finish_reason=choice.finish_reason or "stop",
            top_logprobs=top,
            schema_enforced=with_schema,
            latency_s=time.perf_counter() - started,
            backend=self.name,
            model=model,
        )

    async def alist_models(self) -> list[dict[str, str | None]]:
        """``GET /models``: every served name with its parent (adapters name the base)."""
        url = f"{self.url}/models"

        async def attempt() -> list[dict[str, str | None]]:
            try:
                async with asyncio.timeout(self.timeout_s):
                    resp = await self._http().get("/models")
            except (TimeoutError, httpx.TimeoutException) as exc:
                raise LLMError("timeout", "no answer", url=url) from exc
            except httpx.TransportError as exc:
                raise LLMError("connection", f"{type(exc).__name__}: {exc}", url=url) from exc
            if resp.status_code >= 500 or resp.status_code == 429:
                raise LLMError("server_error", resp.text[:300], url=url, status=resp.status_code)
            if resp.status_code >= 400:
                raise LLMError("bad_request", resp.text[:300], url=url, status=resp.status_code)
            try:
                cards = _ModelList.model_validate_json(resp.content).data
            except ValidationError as exc:
                raise LLMError("server_error", f"unreadable: {resp.text[:200]}", url=url) from exc
            return [{"id": c.id, "parent": c.parent, "root": c.root} for c in cards]

        return await self._with_retries(attempt)

    def list_models(self) -> list[dict[str, str | None]]:
        return self._run(self.alist_models())
