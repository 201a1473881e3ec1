"""What every request passes before a route: a request id (header, logs), bearer auth, the body
size limit (413), the concurrency limit (429 with Retry-After), the access log line and the
HTTP metrics. Pure ASGI, so streamed answers are counted until their last byte. Answers carry
``Server-Timing: app;dur=<ms>`` (the server's time until the answer starts), so a client can
tell the server's share of a latency from the network's and its own."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.api.auth import bearer_ok
from agent.api.metrics import Metrics

log = logging.getLogger("recbridge.api")
# One line per request; its own plain handler (agent/api/server.py): rich rendering per request
# cost more than the request itself under load.
access_log = logging.getLogger("recbridge.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_GOOD_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = ("/healthz", "/metrics", "/docs", "/openapi.json", "/redoc")  # no key, no limit


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def error_body(status: int, message: str, kind: str, param: str | None, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    ).encode()


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
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = keys
        self.max_body = max_body_bytes
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
        started = time.perf_counter()
        status = {"code": 500}
        extra_headers = [(b"x-request-id", rid.encode())]

        too_large = {"hit": False, "answered": False}

        async def send_with_id(message: Message) -> None:
            if too_large["hit"] and not too_large["answered"]:
                # The app answered a body cut short by the limit: answer 413 in its place.
                too_large["answered"] = True
                await refuse(
                    413,
                    f"body: more than {self.max_body} bytes",
                    "invalid_request_error",
                    "body_too_large",
                    "body",
                )
                return
            if too_large["answered"]:
                return
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                took = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
                message["headers"] = [
                    *message.get("headers", []),
                    *extra_headers,
                    (b"server-timing", took.encode()),
                ]
            await send(message)

        async def refuse(
            code: int,
            message: str,
            kind: str,
            err: str,
            param: str | None = None,
            more: list[tuple[bytes, bytes]] | None = None,
        ) -> None:
            self.metrics.rejected.labels(err).inc()
            body = error_body(code, message, kind, param, err)
            status["code"] = code
            await send(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *extra_headers,
                        *(more or []),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        guarded = not path.startswith(OPEN_PATHS)
        counted = False
        try:
            if guarded and not bearer_ok(headers.get("authorization"), self.keys):
                await refuse(
                    401,
                    "missing or invalid API key (Authorization: Bearer <key>)",
                    "authentication_error",
                    "invalid_api_key",
                    more=[(b"www-authenticate", b"Bearer")],
                )
                return
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body:
                await refuse(
                    413,
                    f"body: {length} bytes, at most {self.max_body} allowed",
                    "invalid_request_error",
                    "body_too_large",
                    "body",
                )
                return
            if guarded and self.in_flight >= self.max_concurrency:
                await refuse(
                    429,
                    f"busy: {self.in_flight} requests in flight; retry later",
                    "rate_limit_error",
                    "too_many_requests",
                    more=[(b"retry-after", str(self.retry_after).encode())],
                )
                return
            self.in_flight += 1
            counted = True
            self.metrics.in_flight.inc()
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        too_large["hit"] = True
                        return {"type": "http.request", "body": b"", "more_body": False}
                return message

            await self.app(scope, limited_receive, send_with_id)
        finally:
            if counted:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
            route: Any = scope.get("route")
            label = getattr(route, "path", None) or ("other" if guarded else path)
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(label, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(label).observe(seconds)
            access_log.info(
                "%s %s %d %.1fms", scope["method"], path, status["code"], seconds * 1000
            )
            request_id_var.reset(token)
