"""The FastAPI app: thin routes over one ``RecBridgeService`` (see README "HTTP API")."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from agent.api import chat
from agent.api.auth import load_keys
from agent.api.guard import Guard, request_id_var
from agent.api.metrics import Metrics
from agent.api.schemas import (
    ApiRerankRequest,
    ApiRerankResponse,
    ApiRerankResult,
    ChatCompletion,
    ChatCompletionRequest,
    ErrorBody,
    Health,
    ModelCard,
    ModelList,
    ProfileRequest,
    RecommendationRequest,
    RecommendationResponse,
    RerankDocument,
    RerankUsage,
    SearchResponse,
)
from agent.llm.backend import LLMError
from agent.profiles.schema import ProfileTree
from agent.service import SERVICE_ERRORS, RecBridgeService, ServiceError
from agent.service.messages import split_list
from agent.service.queries import Query as ServiceQuery
from agent.service.queries import RecommendOutcome, Usage

log = logging.getLogger("recbridge.api")

_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": kind} for code, kind in _KINDS.items()
}


def _error(status: int, message: str, param: str | None, code: str) -> JSONResponse:
    kind = _KINDS.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _query(
    user: str | None, history: list[str] | None, *, pipeline: str | None = None, **kw: object
) -> ServiceQuery:
    return ServiceQuery(
        user=user,
        history=tuple(history or ()),
        pipeline=pipeline,
        **kw,  # type: ignore[arg-type]
    )


def _response(outcome: RecommendOutcome) -> RecommendationResponse:
    return RecommendationResponse(
        id=request_id_var.get(),
        model=outcome.pipeline,
        user_id=outcome.user_id,
        domain=outcome.domain,
        history=outcome.history,
        items=outcome.items,
        reason=outcome.reason,
        fallback=outcome.fallback,
        error=outcome.error,
        resolved=outcome.resolved,
        usage=outcome.usage,
        seconds=outcome.seconds,
    )


def create_app(service: RecBridgeService) -> FastAPI:
    """The app over ``service``; the service is closed when the app shuts down."""
    serve = service.settings.serve
    metrics = Metrics()
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Requests in flight have finished (uvicorn waits for them): release the clients.
        await service.aclose()
        log.info("service closed")

    app = FastAPI(
        title="RecBridge",
        version="0.1.0",
        summary="LLM-driven cross-domain recommendation: chat completions, rerank, "
        "recommendations, profiles, item search.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.add_middleware(
        Guard,
        metrics=metrics,
        keys=load_keys(serve),
        max_body_bytes=serve.max_body_bytes,
        max_concurrency=serve.max_concurrency,
        retry_after_s=serve.retry_after_s,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        param = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('body', 'query'))}: "
            f"{e.get('msg', '')}"
            for e in errors[:5]
        )
        return _error(422, message, param, "invalid_value")

    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(LLMError)
    async def llm_down(request: Request, exc: LLMError) -> JSONResponse:
        log.warning("LLM failed: %s", exc)
        return _error(503, f"the LLM is unavailable: {exc}", None, "llm_unavailable")

    @app.exception_handler(Exception)
    async def library_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, SERVICE_ERRORS):
            log.warning("%s: %s", type(exc).__name__, exc)
            return _error(503, f"{type(exc).__name__}: {exc}", None, "unavailable")
        log.exception("internal error")
        return _error(500, "internal error; see the server log", None, "internal_error")

    async def _recommend(query: ServiceQuery) -> RecommendOutcome:
        outcome = await service.arecommend(query)
        metrics.record(outcome.pipeline, outcome.usage, outcome.fallback)
        return outcome

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={200: {"content": {"text/event-stream": {}}}},
        tags=["chat"],
    )
    async def chat_completions(body: ChatCompletionRequest) -> ChatCompletion | StreamingResponse:
        """OpenAI chat completions: ``model`` is a pipeline, the user turns carry the request
        (README "Message format"); the answer is the ranked list, text or JSON."""
        outcome = await _recommend(chat.chat_query(body))
        rid = request_id_var.get()
        if body.stream:
            return StreamingResponse(
                chat.stream_events(body, outcome, rid), media_type="text/event-stream"
            )
        return chat.completion(body, outcome, _response(outcome), rid)

    @app.get("/v1/models", response_model=ModelList, tags=["chat"])
    async def models() -> ModelList:
        """The pipelines this server serves (the ``model`` of every request)."""
        return ModelList(
            data=[
                ModelCard(
                    id=name,
                    created=started,
                    retriever=spec.retriever,
                    reranker=spec.reranker,
                    profile=spec.use_profile,
                )
                for name, spec in service.pipelines.items()
            ]
        )

    @app.post("/v1/recommendations", response_model=RecommendationResponse, tags=["rest"])
    async def recommendations(body: RecommendationRequest) -> RecommendationResponse:
        """The top K of a domain for a user or a history, with titles, scores and reasons."""
        query = _query(
            body.user,
            body.history,
            pipeline=body.model,
            candidates=tuple(body.candidates) if body.candidates is not None else None,
            domain=body.domain,
            top_k=body.top_k,
            exclude=tuple(body.exclude),
            allow_fallback=body.allow_fallback,
        )
        return _response(await _recommend(query))

    @app.post("/v1/rerank", response_model=ApiRerankResponse, tags=["rest"])
    async def rerank(body: ApiRerankRequest) -> ApiRerankResponse:
        """Jina/Cohere rerank: ``documents`` (item ids or texts) ordered for ``query`` (a user
        id, a history string, or ``{"user"|"history"}``)."""
        if isinstance(body.query, str):
            text = body.query.strip()
            user = text if _is_user(service, text) else None
            history = None if user else split_list(text)
        else:
            user, history = body.query.user, body.query.history
        query = _query(user, history, pipeline=body.model, allow_fallback=body.allow_fallback)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        outcome = await service.arerank(query, texts, body.top_n)
        metrics.record(outcome.pipeline, outcome.usage, outcome.fallback)
        return ApiRerankResponse(
            id=request_id_var.get(),
            model=outcome.pipeline,
            results=[
                ApiRerankResult(
                    index=hit.index,
                    relevance_score=hit.relevance_score,
                    item_id=hit.item_id,
                    document=RerankDocument(text=texts[hit.index])
                    if body.return_documents
                    else None,
                )
                for hit in outcome.results
            ],
            fallback=outcome.fallback,
            error=outcome.error,
            usage=RerankUsage(
                prompt_tokens=outcome.usage.prompt_tokens,
                completion_tokens=outcome.usage.completion_tokens,
                total_tokens=outcome.usage.total_tokens,
                llm_calls=outcome.usage.llm_calls,
            ),
        )

    @app.post("/v1/profiles", response_model=ProfileTree, tags=["rest"])
    async def profiles(body: ProfileRequest) -> ProfileTree:
        """The hierarchical LLM profile of a user or a history (cached)."""
        tree = await service.aprofile(_query(body.user, body.history))
        metrics.record("profile", _tree_usage(tree), "profile_fallback" if tree.fallbacks else None)
        return tree

    @app.get("/v1/items/search", response_model=SearchResponse, tags=["rest"])
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=1000, description="Search text.")],
        domain: Annotated[str | None, Query(description="Restrict to one domain.")] = None,
        k: Annotated[int, Query(ge=1, description="How many items.")] = 10,
    ) -> SearchResponse:
        """Semantic search over the item index (Chroma): the items nearest to ``q``."""
        hits = await service.asearch(q, domain, k)
        return SearchResponse(query=q, domain=domain, results=hits)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["ops"])
    async def healthz() -> JSONResponse:
        """200 when the store and the LLM answer, else 503 with what is wrong."""
        health = await service.ahealth()
        return JSONResponse(health, status_code=200 if health["ok"] else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    async def prometheus() -> PlainTextResponse:
        """Prometheus text format: requests, latency, in flight, refusals, LLM calls, fallbacks."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _is_user(service: RecBridgeService, text: str) -> bool:
    try:
        service.find_user(text)
    except ServiceError:
        return False
    return True


def _tree_usage(tree: ProfileTree) -> Usage:
    return Usage(
        prompt_tokens=tree.prompt_tokens,
        completion_tokens=tree.completion_tokens,
        llm_calls=tree.llm_calls,
    )
