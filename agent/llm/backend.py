"""The backend interface: retries with backoff, a concurrency limit, and batches that survive
failed items. Backends implement one attempt (``_attempt``); everything else lives here."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Literal, TypeVar

from agent.llm.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

ErrorKind = Literal["timeout", "server_error", "connection", "bad_request", "internal"]
RETRYABLE: frozenset[ErrorKind] = frozenset({"timeout", "server_error", "connection"})
MAX_RETRY_AFTER_S = 30.0  # never sleep longer than this on a server's Retry-After
T = TypeVar("T")


class LLMError(Exception):
    """A generation that failed for good (after retries); says what, where and with which model.

    ``server_error`` covers 5xx and 429 (retried); ``bad_request`` other 4xx (not retried);
    ``internal`` a bug or resource problem inside an in-process backend.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        url: str = "",
        model: str = "",
        status: int | None = None,
        attempts: int = 1,
        retry_after_s: float | None = None,
    ) -> None:
        self.kind: ErrorKind = kind
        self.message = message
        self.url = url
        self.model = model
        self.status = status
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " ".join(p for p in (self.url, f"model={self.model}" if self.model else "") if p)
        status = f" HTTP {self.status}" if self.status is not None else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"LLM {self.kind}{status}{tries} ({where}): {self.message}"

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


class LLMBackend(ABC):
    """Chat messages in, text + token counts (+ optional next-token logprobs) out.

    Sync methods run their own event loop; inside a running loop use the ``a*`` methods.
    """

    name: str = "base"
    # Kinds worth another attempt; an in-process backend narrows this (a retry would fail alike).
    retry_kinds: frozenset[ErrorKind] = RETRYABLE

    def __init__(
        self,
        *,
        timeout_s: float = 120.0,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
        concurrency: int = 4,
    ) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.concurrency = max(1, concurrency)

    @property
    @abstractmethod
    def model(self) -> str:
        """The base model's (served) name."""

    @abstractmethod
    async def _attempt(self, req: GenerationRequest) -> GenerationResult:
        """One try; raises LLMError with the right kind on failure."""

    async def aclose(self) -> None:
        """Release connections or models; the backend stays usable (it reopens lazily)."""
        return None  # an optional hook: nothing to release by default

    async def agenerate(self, req: GenerationRequest) -> GenerationResult:
        tries = 0

        async def attempt() -> GenerationResult:
            nonlocal tries
            tries += 1
            return await self._attempt(req)

        result = await self._with_retries(attempt, model=req.adapter)
        result.attempts = tries  # retries are counted where results are summed up
        return result

    def generate(self, req: GenerationRequest) -> GenerationResult:
        return self._run(self.agenerate(req))

    async def agenerate_batch(
        self, reqs: Sequence[GenerationRequest], concurrency: int | None = None
    ) -> list[GenerationResult | LLMError]:
        """All requests, at most ``concurrency`` in flight; a failure fills its own slot only."""
        limit = asyncio.Semaphore(max(1, concurrency or self.concurrency))

        async def one(req: GenerationRequest) -> GenerationResult | LLMError:
            async with limit:
                try:
                    return await self.agenerate(req)
                except LLMError as exc:
                    log.warning("batch item failed: %s", exc)
                    return exc

        return list(await asyncio.gather(*(one(r) for r in reqs)))

    def generate_batch(
        self, reqs: Sequence[GenerationRequest], concurrency: int | None = None
    ) -> list[GenerationResult | LLMError]:
        return self._run(self.agenerate_batch(reqs, concurrency))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        async def run_and_close() -> T:
            try:
                return await coro
            finally:
                # Async clients belong to the loop that made them; asyncio.run closes this one.
                await self.aclose()

        return asyncio.run(run_and_close())

    async def _with_retries(
        self, attempt: Callable[[], Awaitable[T]], model: str | None = None
    ) -> T:
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except LLMError as exc:
                exc.attempts = tries
                if exc.kind not in self.retry_kinds or tries > self.retries:
                    raise
                delay = self.retry_backoff_s * 2 ** (tries - 1)
                if exc.retry_after_s is not None:
                    delay = max(delay, min(exc.retry_after_s, MAX_RETRY_AFTER_S))
                log.info(
                    "%s (model %s): retry %d/%d in %.2fs",
                    exc.kind,
                    model or self.model,
                    tries,
                    self.retries,
                    delay,
                )
                await asyncio.sleep(delay)
