"""The API's rough edges against the real ``recbridge serve`` (local LLM): hand-made bad requests
(lone surrogates in every endpoint's strings, bodies that are not UTF-8 or JSON or nest too
deep, ill-typed fields, a long query string, unknown routes, wrong methods, huge bodies) are
each a 4xx in OpenAI's error shape naming the field in one path style, with a request id on
the answer and on every server log line of it; and the RecBridge extensions: a model's card by
id, a rerank query that names no user (404), what rerank resolved, exclusions that removed
nothing, and per-request rerank templates."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from typing import Any

import httpx
import openai
import pytest

from agent.data.schema import Dataset
from tests.integration.api_fixtures import ApiServer

pytestmark = pytest.mark.integration

LISTWISE = "sasrec-id+listwise"
TEMPLATES = ["rerank_listwise.j2", "rerank_listwise_brief.j2"]
NOT_UTF8 = "not valid UTF-8 text: surrogates not allowed"


@pytest.fixture(scope="module")
def http(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client() as client:
        yield client


@dataclass(frozen=True)
class Bad:
    """One bad request and the refusal it must get."""

    name: str
    method: str
    path: str
    status: int
    param: str | None
    json: Any = None  # sent with json.dumps: a lone surrogate goes as its \ud800 escape
    content: bytes | None = None  # sent as is (application/json)
    headers: dict[str, str] = field(default_factory=dict)
    says: str = ""  # in the message


def _chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "popularity", "messages": list(messages), **extra}


def _surrogate(name: str, path: str, param: str, body: dict[str, Any]) -> Bad:
    return Bad(name, "POST", path, 422, param, body, says=NOT_UTF8)


def _nested(depth: int) -> bytes:
    return b'{"history": ' + b"[" * depth + b"]" * depth + b"}"


BAD = [
    # lone surrogates, every endpoint and kind of string field
    _surrogate("rec-history", "/v1/recommendations", "history[0]",
        {"history": ["\ud800abc"]}),
    _surrogate("rec-user", "/v1/recommendations", "user", {"user": "t1\udfff"}),
    _surrogate("rec-exclude", "/v1/recommendations", "exclude[1]",
        {"user": "t1", "exclude": ["x", "\ud800"]}),
    _surrogate("rec-candidates", "/v1/recommendations", "candidates[0]",
        {"user": "t1", "candidates": ["\udc00"]}),
    _surrogate("rec-domain", "/v1/recommendations", "domain",
        {"user": "t1", "domain": "food\ud800"}),
    _surrogate("rec-model", "/v1/recommendations", "model",
        {"user": "t1", "model": "\ud800"}),
    _surrogate("rec-template", "/v1/recommendations", "template",
        {"user": "t1", "model": LISTWISE, "template": "\ud800"}),
    _surrogate("chat-content", "/v1/chat/completions", "messages[0].content",
        _chat({"role": "user", "content": "user: t1\ud800"})),
    _surrogate("chat-text-part", "/v1/chat/completions", "messages[1].content[0].text",
        _chat({"role": "system", "content": "hi"},
              {"role": "user", "content": [{"type": "text", "text": "\ud800"}]})),
    _surrogate("chat-name", "/v1/chat/completions", "messages[0].name",
        _chat({"role": "user", "content": "user: t1", "name": "\ud800"})),
    _surrogate("chat-model", "/v1/chat/completions", "model",
        {"model": "\ud800", "messages": [{"role": "user", "content": "user: t1"}]}),
    _surrogate("rerank-query", "/v1/rerank", "query",
        {"query": "\ud800", "documents": ["x"]}),
    _surrogate("rerank-query-history", "/v1/rerank", "query.history[0]",
        {"query": {"history": ["\ud800"]}, "documents": ["x"]}),
    _surrogate("rerank-documents", "/v1/rerank", "documents[1]",
        {"query": "t1", "documents": ["green tea", "\ud800"]}),
    _surrogate("rerank-document-text", "/v1/rerank", "documents[0].text",
        {"query": "t1", "documents": [{"text": "tea\udfff"}]}),
    _surrogate("profiles-history", "/v1/profiles", "history[0]", {"history": ["\ud800"]}),
    _surrogate("profiles-user", "/v1/profiles", "user", {"user": "\ud800"}),
    _surrogate("resolve-refs", "/v1/items/resolve", "refs[1]", {"refs": ["tea", "\ud800 tea"]}),
    # a surrogate UTF-8-encoded in the raw body (json.loads lets it through)
    Bad("raw-surrogate", "POST", "/v1/recommendations", 422, "history[0]",
        content=b'{"history": ["\xed\xa0\x80"]}', says=NOT_UTF8),
    # bodies that are not JSON
    Bad("invalid-utf8", "POST", "/v1/recommendations", 400, "body",
        content=b'{"history": ["\xff\xfe"]}', says="not valid UTF-8 at byte"),
    Bad("malformed-json", "POST", "/v1/recommendations", 400, "body",
        content=b'{"user": "t1", "top_k": 3 "x"}',
        says="body: invalid JSON at line 1, column 27: Expecting ',' delimiter"),
    Bad("deep-nesting", "POST", "/v1/recommendations", 400, "body", content=_nested(30_000),
        says="nested too deeply"),
    Bad("deep-nesting-100k", "POST", "/v1/recommendations", 413, "body",
        content=_nested(100_000)),
    Bad("empty-body", "POST", "/v1/recommendations", 422, "body", content=b""),
    Bad("not-an-object", "POST", "/v1/rerank", 422, "body", content=b"[1, 2]"),
    # missing and ill-typed fields
    Bad("rerank-no-query", "POST", "/v1/rerank", 422, "query", {"documents": ["x"]},
        says="Field required"),
    Bad("rerank-query-int", "POST", "/v1/rerank", 422, "query", {"query": 5, "documents": ["x"]}),
    Bad("rerank-query-extra", "POST", "/v1/rerank", 422, "query.colour",
        {"query": {"colour": "red"}, "documents": ["x"]}),
    Bad("rerank-document-int", "POST", "/v1/rerank", 422, "documents[0]",
        {"query": "t1", "documents": [5]}),
    Bad("chat-role-missing", "POST", "/v1/chat/completions", 422, "messages[0].role",
        _chat({"content": "user: t1"})),
    Bad("chat-role-bad", "POST", "/v1/chat/completions", 422, "messages[0].role",
        _chat({"role": "robot", "content": "user: t1"})),
    Bad("chat-messages-str", "POST", "/v1/chat/completions", 422, "messages",
        {"model": "popularity", "messages": "user: t1"}),
    Bad("rec-top-k-str", "POST", "/v1/recommendations", 422, "top_k",
        {"user": "t1", "top_k": "many"}),
    Bad("search-k", "GET", "/v1/items/search?q=tea&k=0", 422, "k"),
    Bad("search-no-q", "GET", "/v1/items/search", 422, "q"),
    # the URL, the route, the method, the size
    Bad("long-query-string", "GET", "/v1/items/search?q=" + "t" * 100_000, 414, "query_string"),
    Bad("unknown-route", "GET", "/v1/nope", 404, None, says="GET /v1/nope"),
    Bad("wrong-method", "DELETE", "/v1/models", 405, None, says="allowed: GET"),
    Bad("huge-body", "POST", "/v1/recommendations", 413, "body",
        {"user": "t1", "exclude": ["x" * 1000] * 100}),
    Bad("unknown-model-card", "GET", "/v1/models/magic+wand", 404, "model"),
    # the extensions' own refusals
    Bad("rerank-unknown-user", "POST", "/v1/rerank", 404, "query",
        {"query": "t1x", "documents": ["green tea"]}, says="no user 't1x'"),
    Bad("template-unknown", "POST", "/v1/recommendations", 404, "template",
        {"user": "t1", "model": LISTWISE, "template": "rerank_nope.j2"},
        says="rerank_listwise_brief.j2"),
    Bad("template-other-reranker", "POST", "/v1/rerank", 404, "template",
        {"query": "t1", "documents": ["green tea"], "model": "popularity+verbalizer",
         "template": "rerank_listwise.j2"}, says="rerank_verbalizer.j2"),
    Bad("template-no-llm", "POST", "/v1/recommendations", 422, "template",
        {"user": "t1", "model": "popularity", "template": "rerank_listwise.j2"}),
    Bad("adapter-unknown", "POST", "/v1/chat/completions", 404, "adapter",
        _chat({"role": "user", "content": "user: t1"}, model=LISTWISE, adapter="nope"),
        says="known: none"),
]  # fmt: skip


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _send(server: ApiServer, bad: Bad, rid: str) -> Answer:
    """The request as written, through the standard library's plain HTTP client (httpx
    refuses URLs over 64 KiB before sending them)."""
    host, port = server.url.removeprefix("http://").split(":")
    headers = {**server.headers, "X-Request-ID": rid, **bad.headers}
    body = None
    if bad.method == "POST":
        body = bad.content if bad.content is not None else json.dumps(bad.json).encode()
        headers["Content-Type"] = "application/json"
    conn = HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(bad.method, bad.path, body=body, headers=headers)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _wait_for_access_line(server: ApiServer, start: int, rid: str) -> str:
    """The server log written since ``start`` once the request's access line is in it (the
    Guard writes it after the answer's last byte)."""
    deadline = time.monotonic() + 10
    while True:
        text = server.log()[start:]
        if f"access [{rid}]" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_bad_requests_are_openai_shaped_4xx_naming_the_field(
    api_server: ApiServer, bad: Bad
) -> None:
    rid = f"edge-{bad.name}"
    start = len(api_server.log())
    resp = _send(api_server, bad, rid)
    assert resp.status == bad.status < 500, resp.body[:2000]
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == bad.param, error
    assert isinstance(error["message"], str) and isinstance(error["code"], str)
    assert error["type"] == ("not_found_error" if bad.status == 404 else "invalid_request_error")
    if bad.param is not None:  # the message starts with the field it names, or names it first
        assert bad.param.split("[")[0].split(".")[0] in error["message"], error
    assert bad.says in error["message"], error
    for tag in ("function-after", "list[TextPart]", "RerankQuery,", ".str:"):
        assert tag not in error["message"]
    assert resp.headers["x-request-id"] == rid
    if bad.status == 405:
        assert resp.headers["allow"] == "GET"
    logged = _wait_for_access_line(api_server, start, rid)
    assert f"access [{rid}] {bad.method} " in logged
    assert "[-]" not in logged, logged[-3000:]


def test_a_model_card_by_id_with_its_templates(api_server: ApiServer, http: httpx.Client) -> None:
    client = openai.OpenAI(
        base_url=api_server.v1, api_key=api_server.key or "none", timeout=120, max_retries=0
    )
    card = client.models.retrieve(LISTWISE)
    assert card.id == LISTWISE and card.object == "model"
    extra = card.model_extra or {}
    assert extra["reranker"] == "listwise" and extra["templates"] == TEMPLATES
    assert extra["adapters"] == []  # none trained in this work folder
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("sasrec-id+magic")
    assert missing.value.body["param"] == "model"  # type: ignore[index]
    # "+" as is and percent-encoded: the same card
    assert http.get("/v1/models/sasrec-id+listwise").json()["id"] == LISTWISE
    assert http.get("/v1/models/sasrec-id%2Blistwise").json()["id"] == LISTWISE
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert cards["popularity"]["templates"] == [] and cards["popularity"]["adapters"] == []
    assert cards["popularity+verbalizer"]["templates"] == ["rerank_verbalizer.j2"]


def test_rerank_query_naming_no_user_is_404_like_recommendations(http: httpx.Client) -> None:
    rerank = http.post("/v1/rerank", json={"query": "t1x", "documents": ["green tea"]})
    recommend = http.post("/v1/recommendations", json={"user": "t1x"})
    assert rerank.status_code == recommend.status_code == 404
    error = rerank.json()["error"]
    assert error["code"] == "not_found" and error["param"] == "query"
    assert '{"query": {"history":' in error["message"] and "';'" in error["message"]
    assert recommend.json()["error"]["param"] == "user"


def test_rerank_says_how_titles_became_items(http: httpx.Client, slice_data: Dataset) -> None:
    docs = [*list(slice_data.items)[:3], "green tea"]
    resp = http.post("/v1/rerank", json={"model": "text-knn", "query": "t1", "documents": docs})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    (tea,) = [r for r in body["resolved"] if r["ref"] == "green tea"]
    assert tea["how"] in ("nearest", "title") and "tea" in tea["title"].lower()
    by_index = {r["index"]: r["item_id"] for r in body["results"]}
    assert by_index[3] == tea["item_id"]
    assert body["template"] is None and body["adapter"] is None  # no LLM reranker
    # A free-text query with spaces stays a history of titles, resolved the same way.
    resp = http.post(
        "/v1/rerank", json={"model": "text-knn", "query": "green tea", "documents": docs[:3]}
    )
    assert resp.status_code == 200, resp.text
    assert [r["ref"] for r in resp.json()["resolved"]] == ["green tea"]


def test_exclusions_that_removed_nothing_are_listed(
    api_server: ApiServer, http: httpx.Client, slice_data: Dataset
) -> None:
    def recommend(top_k: int, exclude: list[str]) -> dict[str, Any]:
        body = {"user": "t1", "model": "popularity", "top_k": top_k, "exclude": exclude}
        resp = http.post("/v1/recommendations", json=body)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    listed = [it["item_id"] for it in recommend(20, [])["items"]]
    domain = slice_data.items[listed[0]].domain
    other = next(i for i in slice_data.items if slice_data.items[i].domain != domain)
    other_title = slice_data.items[other].title
    top, far = listed[0], listed[-1]  # far: 20th, never reached for a top 3
    body = recommend(3, [top, other, far, other_title])
    assert [it["item_id"] for it in body["items"]] == listed[1:4]
    assert body["exclude_unmatched"] == [other, far, other_title]  # as given
    assert recommend(3, [top])["exclude_unmatched"] == []
    # The chat answer says so in one line, and carries the list.
    client = openai.OpenAI(
        base_url=api_server.v1, api_key=api_server.key or "none", timeout=120, max_retries=0
    )
    reply = client.chat.completions.create(
        model="popularity",
        messages=[{"role": "user", "content": f"user: t1\ntop_k: 3\nexclude: {top}; {far}"}],
    )
    text = reply.choices[0].message.content or ""
    assert f"Note: not in the list, nothing excluded: {far}" in text.splitlines()
    assert (reply.model_extra or {})["recommendation"]["exclude_unmatched"] == [far]


def test_rerank_template_variants_side_by_side(api_server: ApiServer, http: httpx.Client) -> None:
    def recommend(**extra: Any) -> dict[str, Any]:
        body = {"user": "t1", "model": LISTWISE, "top_k": 5, **extra}
        resp = http.post("/v1/recommendations", json=body)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    default = recommend()
    brief = recommend(template="rerank_listwise_brief.j2")
    assert default["model"] == brief["model"] == LISTWISE
    assert default["template"] == "rerank_listwise.j2" and default["adapter"] is None
    assert brief["template"] == "rerank_listwise_brief.j2"
    for answer in (default, brief):
        assert answer["usage"]["llm_calls"] >= 1 and answer["fallback"] is None
        assert len(answer["items"]) == 5
    # the same candidates in a shorter prompt
    assert brief["usage"]["prompt_tokens"] < default["usage"]["prompt_tokens"]
    # The same choice through the openai client's extra_body, and on /v1/rerank.
    client = openai.OpenAI(
        base_url=api_server.v1, api_key=api_server.key or "none", timeout=600, max_retries=0
    )
    reply = client.chat.completions.create(
        model=LISTWISE,
        messages=[{"role": "user", "content": "user: t1\ntop_k: 3"}],
        extra_body={"template": "rerank_listwise_brief.j2"},
    )
    assert (reply.model_extra or {})["recommendation"]["template"] == "rerank_listwise_brief.j2"
    docs = [it["item_id"] for it in default["items"]]
    resp = http.post(
        "/v1/rerank",
        json={"model": LISTWISE, "query": "t1", "documents": docs, "template": TEMPLATES[1]},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["template"] == TEMPLATES[1] and resp.json()["usage"]["llm_calls"] >= 1
