"""What every request passes before a route: a request id (header, logs), bearer auth, the query
string and body size limits (414, 413), the concurrency limit (429 with Retry-After), the
access log line and the HTTP metrics; and what no route answered: an exception from the app
is logged with the request id and answered as an OpenAI-shaped 500 carrying it. Pure ASGI, so
streamed answers are counted until their last byte. Answers carry
``Server-Timing: app;dur=<ms>`` (the server's time until the answer starts), so a client can
tell the server's share of a latency from the network's and its own."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.api.auth import bearer_ok
from agent.api.errors import error_bytes
from agent.api.metrics import Metrics

log = logging.getLogger("recbridge.api")
# One line per request; its own plain handler (agent/api/server.py): rich rendering per request
# cost more than the request itself under load.
access_log = logging.getLogger("recbridge.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_GOOD_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# No key, no limit: probes, the docs, and the page (which asks for the key itself).
OPEN_PATHS = ("/healthz", "/metrics", "/docs", "/openapi.json", "/redoc", "/static/")
# No request of this API needs a long query string (search text is at most 1000 characters);
# the server's HTTP parser lets up to 1 MiB through (agent/api/server.py) so this answers it.
MAX_QUERY_BYTES = 8192


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _Exchange:
    """One request's answer as the Guard sees it: its status, whether it started, the request
    id header on it, and refusals in OpenAI's shape."""

    def __init__(self, send: Send, rid: str, metrics: Metrics, max_body: int) -> None:
        self._send = send
        self.rid = rid
        self.metrics = metrics
        self.max_body = max_body
        self.began = time.perf_counter()
        self.status = 500
        self.started = False  # the response's start went out: no other answer is possible
        self.cut_short = False  # the body went over the limit: a 413 replaces the app's answer
        self._replaced = False

    @property
    def id_header(self) -> tuple[bytes, bytes]:
        return (b"x-request-id", self.rid.encode())

    async def send(self, message: Message) -> None:
        """The app's ``send``: the request id and Server-Timing on the response's start."""
        if self.cut_short:
            if not self._replaced:
                self._replaced = True
                await self.too_large()
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            took = f"app;dur={(time.perf_counter() - self.began) * 1000:.1f}"
            message["headers"] = [
                *message.get("headers", []),
                self.id_header,
                (b"server-timing", took.encode()),
            ]
        await self._send(message)

    async def answer(
        self,
        code: int,
        message: str,
        err: str,
        param: str | None = None,
        more: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = error_bytes(code, message, param, err)
        self.status = code
        self.started = True
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            self.id_header,
            *(more or []),
        ]
        await self._send({"type": "http.response.start", "status": code, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def refuse(
        self,
        code: int,
        message: str,
        err: str,
        param: str | None = None,
        more: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """An answer before the app saw the request (counted as a refusal)."""
        self.metrics.rejected.labels(err).inc()
        await self.answer(code, message, err, param, more)

    async def too_large(self) -> None:
        await self.refuse(413, f"body: more than {self.max_body} bytes", "body_too_large", "body")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        keys: list[str],
        max_body_bytes: int,
        max_concurrency: int,
        retry_after_s: int,
        max_query_bytes: int = MAX_QUERY_BYTES,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = keys
        self.max_body = max_body_bytes
        self.max_query = max_query_bytes
        self.max_concurrency = max_concurrency
        self.retry_after = retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        rid = given if _GOOD_ID.match(given) else uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        path: str = scope["path"]
        exchange = _Exchange(send, rid, self.metrics, self.max_body)
        guarded = not (path == "/" or path.startswith(OPEN_PATHS))
        counted = False
        keep_id = False
        try:
            refused = await self._refusal(exchange, headers, scope, guarded)
            if refused:
                return
            self.in_flight += 1
            counted = True
            self.metrics.in_flight.inc()
            try:
                await self.app(scope, self._limited(receive, exchange), exchange.send)
            except Exception:
                if exchange.started:
                    # No other answer is possible: the server closes the connection and logs
                    # the traceback, in this task, after us: keep the id set for that line.
                    keep_id = True
                    log.error("%s %s failed after its answer started", scope["method"], path)
                    raise
                await self._failed(exchange, scope)
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            self._account(scope, exchange, guarded)
            if not keep_id:
                request_id_var.reset(token)

    async def _refusal(
        self, exchange: _Exchange, headers: dict[str, str], scope: Scope, guarded: bool
    ) -> bool:
        """Answer the request here when a limit refuses it; True when it did."""
        if guarded and not bearer_ok(headers.get("authorization"), self.keys):
            await exchange.refuse(
                401,
                "missing or invalid API key (Authorization: Bearer <key>)",
                "invalid_api_key",
                more=[(b"www-authenticate", b"Bearer")],
            )
            return True
        query_bytes = len(scope.get("query_string", b""))
        if query_bytes > self.max_query:
            await exchange.refuse(
                414,
                f"query_string: {query_bytes} bytes, at most {self.max_query} allowed",
                "query_string_too_long",
                "query_string",
            )
            return True
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await exchange.refuse(
                413,
                f"body: {length} bytes, at most {self.max_body} allowed",
                "body_too_large",
                "body",
            )
            return True
        if guarded and self.in_flight >= self.max_concurrency:
            await exchange.refuse(
                429,
                f"busy: {self.in_flight} requests in flight; retry later",
                "too_many_requests",
                more=[(b"retry-after", str(self.retry_after).encode())],
            )
            return True
        return False

    def _limited(self, receive: Receive, exchange: _Exchange) -> Receive:
        """``receive`` that ends the body at the size limit (a chunked body has no length)."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    exchange.cut_short = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        return limited_receive

    async def _failed(self, exchange: _Exchange, scope: Scope) -> None:
        """An exception no handler answered, before the answer started: logged with its
        traceback (inside the request: tagged with its id) and answered as a 500 naming
        the id."""
        if exchange.cut_short:
            await exchange.too_large()  # the app choked on the body the limit cut
            return
        log.exception("internal error on %s %s", scope["method"], scope["path"])
        await exchange.answer(
            500,
            f"internal error; see the server log (request id {exchange.rid})",
            "internal_error",
        )

    def _account(self, scope: Scope, exchange: _Exchange, guarded: bool) -> None:
        """The request's metrics and access log line."""
        route: Any = scope.get("route")
        path: str = scope["path"]
        label = getattr(route, "path", None) or ("other" if guarded else path)
        seconds = time.perf_counter() - exchange.began
        self.metrics.requests.labels(label, scope["method"], str(exchange.status)).inc()
        self.metrics.latency.labels(label).observe(seconds)
        access_log.info("%s %s %d %.1fms", scope["method"], path, exchange.status, seconds * 1000)
