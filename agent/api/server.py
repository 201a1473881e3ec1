"""Run the API with uvicorn: the service is built (and preloaded) before the port opens;
SIGINT/SIGTERM stop accepting, let requests in flight finish (``serve.graceful_timeout_s``),
then close the service."""

from __future__ import annotations

import logging
import sys

import uvicorn

from agent.api.app import create_app
from agent.api.guard import RequestIdFilter
from agent.config import Settings
from agent.models.prepare import ValidFnFactory
from agent.service import RecBridgeService
from agent.service.llm import BackendKind

log = logging.getLogger("recbridge.api")
MAX_HEAD_BYTES = 1 << 20  # request line + headers


def _log_request_ids() -> None:
    """Every log line of the server carries its request id (``-`` outside requests); the
    access log (one line per request) goes to stderr through a plain, cheap handler."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
            handler.setFormatter(logging.Formatter("[%(request_id)s] %(message)s"))
    access = logging.getLogger("recbridge.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s access [%(request_id)s] %(message)s"))
        access.addHandler(handler)
        access.propagate = False


def run_server(
    settings: Settings,
    *,
    backend: BackendKind | None = None,
    train_missing: bool | None = None,
    valid_fn_factory: ValidFnFactory | None = None,
) -> None:
    """Build the service, then serve it on ``serve.host:serve.port`` until stopped
    (``valid_fn_factory``: early stopping for retrievers it trains, ``serve.train_missing``)."""
    service = RecBridgeService.from_settings(
        settings,
        backend=backend,
        train_missing=train_missing,
        preload=True,
        valid_fn_factory=valid_fn_factory,
    )
    app = create_app(service)
    serve = settings.serve
    config = uvicorn.Config(
        app,
        host=serve.host,
        port=serve.port,
        log_config=None,  # our logging setup; uvicorn's own access log is replaced by Guard's
        access_log=False,
        # The stdlib loop, not uvloop: under uvloop the thread that scores (asyncio.to_thread)
        # waited ~8 ms per request on the run queue of a loaded 2-core box (3x its CPU time);
        # a retriever-only /v1/rerank took 17-20 ms in the server, 6-7 ms with this loop.
        loop="asyncio",
        # h11 named (uvicorn would pick httptools when installed, with other limits): its
        # limit on a request's head, 16 KiB by default, answered a long query string with a
        # plain-text 400 before the app; raised so that the Guard refuses it (414, OpenAI's
        # shape, with a request id) over MAX_QUERY_BYTES.
        http="h11",
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=int(serve.graceful_timeout_s),
        lifespan="on",
    )
    _log_request_ids()
    log.info(
        "RecBridge API on http://%s:%d (pipelines: %s)",
        serve.host,
        serve.port,
        ", ".join(service.pipelines),
    )
    uvicorn.Server(config).run()
