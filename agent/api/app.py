"""The FastAPI app: thin routes over one ``RecBridgeService`` (see README "HTTP API")."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BeforeValidator
from starlette.exceptions import HTTPException

from agent.api import chat
from agent.api.auth import load_keys
from agent.api.browse import browse_router
from agent.api.errors import (
    KINDS,
    body_error_message,
    describe_errors,
    error_payload,
    json_error_message,
)
from agent.api.guard import Guard, request_id_var
from agent.api.metrics import Metrics
from agent.api.page import mount_page
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
    Text,
    utf8_input,
    utf8_text,
)
from agent.llm.backend import LLMError
from agent.profiles.schema import ProfileTree
from agent.service import SERVICE_ERRORS, PipelineSpec, RecBridgeService, ServiceError
from agent.service.queries import Query as ServiceQuery
from agent.service.queries import RecommendOutcome, Usage

log = logging.getLogger("recbridge.api")

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": kind} for code, kind in KINDS.items()
}


def _error(
    status: int,
    message: str,
    param: str | None,
    code: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_payload(status, message, param, code), status, headers=headers)


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
        exclude_unmatched=outcome.exclude_unmatched,
        template=outcome.template,
        adapter=outcome.adapter,
        usage=outcome.usage,
        seconds=outcome.seconds,
    )


def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no route, wrong method, an unreadable body) in OpenAI's
    shape; the headers it set (``Allow`` on a 405) kept."""
    where = f"{request.method} {request.url.path}"
    status = exc.status_code
    if status == 404:
        message, param, code = f"no route {where}; see /docs", None, "not_found"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = (
            f"method {request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        )
        param, code = None, "method_not_allowed"
    elif status == 400:
        # FastAPI hides why it could not read the body (RecursionError, UnicodeDecodeError).
        message, param, code = body_error_message(exc.__cause__), "body", "invalid_json"
    elif status == 413:
        message, param, code = f"body: too large ({exc.detail})", "body", "body_too_large"
    else:
        message, param, code = f"{where}: {exc.detail}", None, f"http_{status}"
    return _error(status, message, param, code, exc.headers)


def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body or parameter pydantic refused: 422 naming the fields (one path style); a body
    that is not JSON at all: 400 with where it broke."""
    errors = exc.errors()
    broken = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if broken is not None:
        loc = broken.get("loc", ())
        pos = loc[-1] if loc and isinstance(loc[-1], int) else 0
        reason = str((broken.get("ctx") or {}).get("error", "JSON decode error"))
        doc = exc.body if isinstance(exc.body, str | bytes) else ""
        return _error(400, json_error_message(doc, pos, reason), "body", "invalid_json")
    message, param = describe_errors(errors, exc.body)
    return _error(422, message, param, "invalid_value")


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

    # Handlers per exception class run inside the middleware (the Guard: request id, access
    # log); any other exception is the Guard's to answer as an OpenAI-shaped 500.
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _http_error(request, exc)

    @app.exception_handler(ServiceError)
    async def refused(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(LLMError)
    async def llm_down(request: Request, exc: LLMError) -> JSONResponse:
        log.warning("LLM failed: %s", exc)
        return _error(503, f"the LLM is unavailable: {exc}", None, "llm_unavailable")

    async def library_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s: %s", type(exc).__name__, exc)
        return _error(503, f"{type(exc).__name__}: {exc}", None, "unavailable")

    for error_class in SERVICE_ERRORS:
        if error_class not in (ServiceError, LLMError):  # their own handlers above
            app.add_exception_handler(error_class, library_error)

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

    def card(name: str, spec: PipelineSpec) -> ModelCard:
        return ModelCard(
            id=name,
            created=started,
            retriever=spec.retriever,
            reranker=spec.reranker,
            profile=spec.use_profile,
            templates=service.rerank_templates(spec.reranker),
            adapters=service.rerank_adapters(spec.reranker),
        )

    @app.get("/v1/models", response_model=ModelList, tags=["chat"])
    async def models() -> ModelList:
        """The pipelines this server serves (the ``model`` of every request), each with the
        rerank ``templates`` and ``adapters`` a request may choose for it."""
        return ModelList(data=[card(name, spec) for name, spec in service.pipelines.items()])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, tags=["chat"])
    async def model(
        model_id: Annotated[
            str,
            Path(description="A pipeline, e.g. sasrec-id+listwise."),
            AfterValidator(utf8_text),
        ],
    ) -> ModelCard:
        """One pipeline's card (``+`` in the name may be sent as is or as ``%2B``)."""
        spec = service.pipeline(model_id, "model")
        return card(spec.name, spec)

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
            template=body.template,
            adapter=body.adapter,
        )
        return _response(await _recommend(query))

    @app.post("/v1/rerank", response_model=ApiRerankResponse, tags=["rest"])
    async def rerank(body: ApiRerankRequest) -> ApiRerankResponse:
        """Jina/Cohere rerank: ``documents`` (item ids or texts) ordered for ``query`` (a user
        id, a history string, or ``{"user"|"history"}``)."""
        if isinstance(body.query, str):
            asked = service.read_query_text(body.query, "query")
        else:
            asked = _query(body.query.user, body.query.history)
        query = replace(
            asked,
            pipeline=body.model,
            allow_fallback=body.allow_fallback,
            template=body.template,
            adapter=body.adapter,
        )
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
            resolved=outcome.resolved,
            template=outcome.template,
            adapter=outcome.adapter,
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
        q: Annotated[
            str,
            Query(min_length=1, max_length=1000, description="Search text."),
            BeforeValidator(utf8_input),
        ],
        domain: Annotated[Text | None, Query(description="Restrict to one domain.")] = None,
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

    app.include_router(browse_router(service))
    mount_page(app)
    return app


def _tree_usage(tree: ProfileTree) -> Usage:
    return Usage(
        prompt_tokens=tree.prompt_tokens,
        completion_tokens=tree.completion_tokens,
        llm_calls=tree.llm_calls,
    )
