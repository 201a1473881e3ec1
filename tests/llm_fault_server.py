"""A real loopback HTTP server (stdlib, in a thread) that speaks just enough of the OpenAI chat
API to play scripted faults: HTTP errors, slowness past the client's timeout, dropped
connections, rejection of ``response_format``. Not a mock: the backend talks real HTTP to it.
With ``upstream`` (a real LLM server's URL) it is a faulty proxy: scripted faults first, then
every "ok" request is forwarded and answered by the real server."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import httpx

Action = Literal["ok", "status", "sleep", "close", "reject_format"]


@dataclass(frozen=True)
class Step:
    action: Action = "ok"
    status: int = 500  # for "status" (and "reject_format": the rejection's code)
    seconds: float = 0.0  # for "sleep"; "ok" replies also wait this long
    headers: tuple[tuple[str, str], ...] = ()
    reply: str | None = None  # for "ok": this answer text instead of the echo of the prompt


OK = Step()


def completion(text: str, model: str, top_k: int = 0) -> dict[str, Any]:
    """A chat completion; with ``top_k``, OpenAI-style logprobs for two positions."""
    logprobs = None
    if top_k:
        alts = [{"token": f"t{i}", "logprob": -0.5 * (i + 1)} for i in range(top_k)]
        logprobs = {"content": [{"token": "t0", "logprob": -0.5, "top_logprobs": alts}] * 2}
    return {
        "id": "cmpl-fault",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


class FaultServer:
    """Replies per ``script`` (consumed in arrival order, then ``default``), or per ``by_prompt``
    (a step for any request whose last message contains the key). Records each request body."""

    def __init__(
        self,
        script: list[Step] | None = None,
        default: Step = OK,
        by_prompt: dict[str, Step] | None = None,
        upstream: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.script = list(script or [])
        self.default = default
        self.by_prompt = dict(by_prompt or {})
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()  # open client connections, closed by stop()
        self._dead = False  # after stop(): answer nothing, as a killed server would
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a handler still sleeping must not hold up stop()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.bodies)

    def _next(self, body: dict[str, Any]) -> Step:
        with self._lock:
            self.bodies.append(body)
            last = str(body.get("messages", [{}])[-1].get("content", ""))
            for key, step in self.by_prompt.items():
                if key in last:
                    return step
            return self.script.pop(0) if self.script else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._conns.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def _send(
                self, code: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)  # fails when the client gave up (timeout test)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "fault-model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                if server._dead:
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                step = server._next(body)
                if step.action == "close":
                    self.close_connection = True  # no response at all
                    return
                if step.action == "status":
                    self._send(step.status, {"error": {"message": "injected"}}, step.headers)
                    return
                if step.action == "reject_format" and "response_format" in body:
                    msg = {"error": {"message": "response_format is not supported"}}
                    self._send(step.status, msg)
                    return
                time.sleep(step.seconds)
                if server.upstream is not None and step.reply is None:
                    path = self.path[len("/v1") :] if self.path.startswith("/v1") else self.path
                    answer = httpx.post(server.upstream + path, json=body, timeout=600.0)
                    self._send(answer.status_code, answer.json())
                    return
                last = body["messages"][-1]["content"]
                top_k = int(body.get("top_logprobs", 0)) if body.get("logprobs") else 0
                text = step.reply if step.reply is not None else f"echo: {last}"
                self._send(200, completion(text, body.get("model", ""), top_k))

        return Handler

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening and cut keep-alive connections, as a dying server would."""
        with self._lock:
            self._dead = True
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.shutdown()
        self._httpd.server_close()
