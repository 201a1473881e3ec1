"""The API's error shape: field paths from real pydantic errors of the request models (one
style: ``messages[0].content``, ``query.user``; union-member tags dropped), JSON errors with
line and column, and the Guard answering an exception from the app as an OpenAI-shaped 500
with the request id, in the header, the body and the log record."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from agent.api.errors import (
    body_error_message,
    describe_errors,
    field_path,
    json_error_message,
)
from agent.api.guard import Guard, RequestIdFilter
from agent.api.metrics import Metrics
from agent.api.schemas import (
    ApiRerankRequest,
    ChatCompletionRequest,
    RecommendationRequest,
    utf8_tree,
)


def _errors(model: type[BaseModel], body: dict[str, Any]) -> list[dict[str, Any]]:
    """FastAPI's view of a body error: pydantic's errors with "body" in front of each loc."""
    with pytest.raises(ValidationError) as failed:
        model.model_validate(body)
    return [{**e, "loc": ("body", *e["loc"])} for e in failed.value.errors()]


def _describe(model: type[BaseModel], body: dict[str, Any]) -> tuple[str, str]:
    return describe_errors(_errors(model, body), body)


@pytest.mark.parametrize(
    ("model", "body", "param", "in_message"),
    [
        (RecommendationRequest, {"history": ["ok", "\ud800abc"]}, "history[1]", "UTF-8"),
        (RecommendationRequest, {"user": "t1", "top_k": 0}, "top_k", "greater than"),
        (RecommendationRequest, {"user": "t1", "colour": "red"}, "colour", "Extra inputs"),
        (ApiRerankRequest, {"documents": ["x"]}, "query", "Field required"),
        (ApiRerankRequest, {"query": 5, "documents": ["x"]}, "query", "valid string or"),
        (ApiRerankRequest, {"query": {"colour": 1}, "documents": ["x"]}, "query.colour", "Extra"),
        (ApiRerankRequest, {"query": {"user": "\udfff"}, "documents": ["x"]}, "query.user", ""),
        (ApiRerankRequest, {"query": "t1", "documents": [5]}, "documents[0]", ""),
        (ApiRerankRequest, {"query": "t1", "documents": ["\ud800"]}, "documents[0]", "UTF-8"),
        (
            ApiRerankRequest,
            {"query": "t1", "documents": ["a", {"text": "\ud800"}]},
            "documents[1].text",
            "UTF-8",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": "\ud800"}]},
            "messages[0].content",
            "UTF-8",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": [{"text": "\ud800"}]}]},
            "messages[0].content[0].text",
            "UTF-8",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"content": "x"}]},
            "messages[0].role",
            "Field required",
        ),
        (
            ChatCompletionRequest,
            {
                "model": "m",
                "messages": [{"role": "user"}],
                "response_format": {"type": "json_schema", "json_schema": {"a": [["\udc00"]]}},
            },
            "response_format.json_schema",
            "UTF-8",
        ),
    ],
)
def test_param_is_one_path_style_without_union_tags(
    model: type[BaseModel], body: dict[str, Any], param: str, in_message: str
) -> None:
    message, got = _describe(model, body)
    assert got == param
    assert message.startswith(param.split(".")[0].split("[")[0])
    assert in_message in message
    # pydantic's union tags never reach the client
    for tag in ("function-after", "RerankQuery:", "list[TextPart]", ".str", "Value error"):
        assert tag not in message


def test_messages_of_one_path_are_merged_and_deduplicated() -> None:
    message, _ = _describe(ApiRerankRequest, {"query": 5, "documents": [5, 6]})
    assert message.count("query:") == 1 and message.count("documents[0]:") == 1
    assert "documents[1]:" in message
    errors = _errors(RecommendationRequest, {"history": ["\ud800"]})
    twice, param = describe_errors(errors + errors, {"history": ["\ud800"]})
    assert param == "history[0]" and twice.count("UTF-8") == 1


def test_field_path_walks_the_body_and_keeps_missing_fields() -> None:
    body = {"query": {"str": 1}, "messages": [{"content": "x"}]}
    assert field_path(("body", "query", "str"), body, "string_type") == "query"
    assert field_path(("body", "query", "RerankQuery", "str"), body, "extra_forbidden") == (
        "query.str"
    )
    assert field_path(("body", "messages", 0, "role"), body, "missing") == "messages[0].role"
    assert field_path(("body", "messages", 0, "str"), body, "string_type") == "messages[0]"
    # query and path parameters: no body to walk; tags recognised by their look
    assert field_path(("query", "q")) == "q"
    assert field_path(("path", "model_id", "function-after[utf8_text(), str]")) == "model_id"
    assert field_path(("body",), body, "missing") == ""


def test_json_errors_say_where() -> None:
    doc = '{"user": "t1",\n "top_k": 3 "x"}'
    with pytest.raises(json.JSONDecodeError) as bad:
        json.loads(doc)
    assert (bad.value.lineno, bad.value.colno) == (2, 13)
    assert json_error_message(doc, bad.value.pos, bad.value.msg) == (
        "body: invalid JSON at line 2, column 13: Expecting ',' delimiter"
    )
    try:
        b'["\xff"]'.decode("utf-8")
    except UnicodeDecodeError as exc:
        assert body_error_message(exc) == "body: not valid UTF-8 at byte 2: invalid start byte"
    assert "nested too deeply" in body_error_message(RecursionError())


def test_utf8_tree_walks_deep_values_without_recursion() -> None:
    deep: Any = "ok"
    for _ in range(100_000):
        deep = [deep]
    assert utf8_tree({"a": deep}) is not None
    deep_bad: Any = "\ud800"
    for _ in range(5_000):
        deep_bad = {"k": deep_bad}
    with pytest.raises(ValueError, match="UTF-8"):
        utf8_tree(deep_bad)


# ------------------------------------------------------------------ the Guard's 500
async def _boom(request: Request) -> JSONResponse:
    logging.getLogger("tests.app").info("about to fail")
    raise RuntimeError("boom: a bug")


async def _late(request: Request) -> StreamingResponse:
    async def chunks() -> Any:
        yield b"first"
        raise RuntimeError("late failure")

    return StreamingResponse(chunks())


def _guarded_app() -> Starlette:
    """The Guard where the server has it: inside Starlette's ServerErrorMiddleware, outside
    the exception handlers and the routes."""
    guard = Middleware(
        Guard, metrics=Metrics(), keys=[], max_body_bytes=1000, max_concurrency=4, retry_after_s=1
    )
    return Starlette(routes=[Route("/boom", _boom), Route("/late", _late)], middleware=[guard])


def _get(app: Starlette, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path, **kw)

    return asyncio.run(go())


def test_guard_answers_an_exception_as_an_openai_500_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO):
        resp = _get(_guarded_app(), "/boom", headers={"X-Request-ID": "trace-500"})
    assert resp.status_code == 500 and resp.headers["x-request-id"] == "trace-500"
    assert resp.json() == {
        "error": {
            "message": "internal error; see the server log (request id trace-500)",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    failed = [r for r in caplog.records if r.exc_info]
    assert len(failed) == 1 and "boom: a bug" in str(failed[0].exc_info[1])  # type: ignore[index]
    served = [r for r in caplog.records if r.name != "httpx"]  # the client's own line
    assert {getattr(r, "request_id", None) for r in served} == {"trace-500"}
    access = [r for r in caplog.records if r.name == "recbridge.access"]
    assert access and access[0].getMessage().startswith("GET /boom 500")


def test_guard_reraises_once_the_answer_started_keeping_the_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    with pytest.raises(RuntimeError, match="late failure"):
        _get(_guarded_app(), "/late", headers={"X-Request-ID": "trace-late"})
    lines = [r for r in caplog.records if r.name == "recbridge.api"]
    assert lines and lines[0].getMessage() == "GET /late failed after its answer started"
    served = [r for r in caplog.records if r.name != "httpx"]
    assert {getattr(r, "request_id", None) for r in served} == {"trace-late"}


def test_guard_refuses_a_long_query_string() -> None:
    resp = _get(_guarded_app(), "/boom?q=" + "x" * 9000)
    assert resp.status_code == 414
    error = resp.json()["error"]
    assert error["param"] == "query_string" and "9002 bytes" in error["message"]
    assert resp.headers["x-request-id"]
    assert json.loads(resp.content)["error"]["type"] == "invalid_request_error"
