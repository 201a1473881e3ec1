"""Every REST endpoint of the real ``recbridge serve`` (local LLM): answers, limits, auth,
request ids, metrics, the OpenAPI schema, and bad inputs as 4xx naming the field."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from agent.data.schema import Dataset, display_title
from agent.profiles.schema import ProfileTree
from tests.integration.api_fixtures import ApiServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def http(api_server: ApiServer) -> Iterator[httpx.Client]:
    with api_server.client() as client:
        yield client


def test_health_and_openapi(http: httpx.Client) -> None:
    health = http.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["ok"] and body["store"]["ok"] and body["llm"]["ok"]
    schema = http.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {
        "/v1/chat/completions",
        "/v1/models",
        "/v1/rerank",
        "/v1/recommendations",
        "/v1/profiles",
        "/v1/items/search",
        "/healthz",
        "/metrics",
    } <= paths
    assert "ProfileTree" in schema["components"]["schemas"]


def test_recommendations_by_user_and_by_history_with_titles(
    http: httpx.Client, slice_data: Dataset
) -> None:
    user = slice_data.split("test")[0]
    resp = http.post(
        "/v1/recommendations", json={"user": user.user_id, "model": "text-knn", "top_k": 5}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["items"]) == 5 and body["history"] == list(user.history)
    assert not set(body["history"]) & {it["item_id"] for it in body["items"]}
    assert all(it["title"] == slice_data.items[it["item_id"]].title for it in body["items"])
    # A history given as an id and an exact title resolves both, and says how.
    first, second = user.history[-2:]
    resp = http.post(
        "/v1/recommendations",
        json={
            "history": [first, slice_data.items[second].title],
            "model": "popularity",
            "top_k": 3,
            "domain": "kitchen",
        },
    )
    body = resp.json()
    assert body["history"] == [first, second]
    assert [r["how"] for r in body["resolved"]] == ["title"]
    assert {it["domain"] for it in body["items"]} == {"kitchen"}
    assert all(it["reason"].endswith("by popularity") for it in body["items"])
    # Reasons name real history items: the ids they cite are the request's history, and the
    # text holds those items' display titles.
    for it in body["items"]:
        assert set(it["because"]) <= {first, second}
        for iid in it["because"]:
            assert display_title(slice_data.items[iid].title, 48) in it["reason"]


def test_recommendations_rerank_with_the_llm_among_candidates(
    http: httpx.Client, slice_data: Dataset
) -> None:
    user = slice_data.split("test")[1]
    assert user.target is not None
    domain = slice_data.domain_of(user.target)
    pool = [i for i in slice_data.items if slice_data.domain_of(i) == domain]
    candidates = [user.target, *[i for i in pool if i not in user.items][:7]]
    resp = http.post(
        "/v1/recommendations",
        json={
            "user": user.user_id,
            "model": "sasrec-id+listwise",
            "candidates": candidates,
            "top_k": 8,
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert sorted(it["item_id"] for it in body["items"]) == sorted(candidates)
    assert body["usage"]["llm_calls"] >= 1 and body["fallback"] is None
    head = [it for it in body["items"] if it["rerank_score"] is not None]
    assert len(head) == 5  # rerank.top_n of the server
    assert all("by listwise (retrieved #" in it["reason"] for it in head)
    assert all(set(it["because"]) <= set(user.history) for it in body["items"])
    assert any(it["because"] for it in body["items"])


def test_rerank_jina_cohere_convention(http: httpx.Client, slice_data: Dataset) -> None:
    user = slice_data.split("test")[2]
    docs = [*list(slice_data.items)[:6], "green tea"]
    resp = http.post(
        "/v1/rerank",
        json={
            "model": "text-knn",
            "query": user.user_id,
            "documents": docs,
            "top_n": 4,
            "return_documents": True,
        },
    )
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 4
    assert len({r["index"] for r in results}) == 4
    assert all(r["document"]["text"] == docs[r["index"]] for r in results)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # The LLM pipeline ranks the same documents: a permutation of all, scores in (0, 1].
    resp = http.post(
        "/v1/rerank",
        json={
            "model": "sasrec-id+listwise",
            "query": {"history": list(user.history)[-20:]},
            "documents": docs,
        },
    )
    body = resp.json()
    assert sorted(r["index"] for r in body["results"]) == list(range(len(docs)))
    assert body["results"][0]["relevance_score"] == 1.0 and body["usage"]["llm_calls"] >= 1


def test_profiles_give_the_hierarchical_profile(http: httpx.Client, slice_data: Dataset) -> None:
    user = slice_data.split("test")[3]
    resp = http.post("/v1/profiles", json={"history": list(user.history)[-4:]})
    assert resp.status_code == 200, resp.text
    tree = ProfileTree.model_validate(resp.json())
    assert tree.history_len == 4 and tree.domains and tree.profile.summary
    assert tree.backend == "local"
    # Grounded by default: the facts come with it, and every cited id is in the history.
    history = set(list(user.history)[-4:])
    assert tree.mode == "grounded" and tree.facts is not None
    assert set(tree.facts.evidence()) <= history
    for node in [tree.profile, *(d.profile for d in tree.domains)]:
        assert set(node.evidence_item_ids) <= history and not node.dislikes


def test_item_search(http: httpx.Client) -> None:
    resp = http.get("/v1/items/search", params={"q": "green tea", "domain": "food", "k": 3})
    body = resp.json()
    assert len(body["results"]) == 3 and {r["domain"] for r in body["results"]} == {"food"}
    assert "tea" in body["results"][0]["title"].lower()
    bad = http.get("/v1/items/search", params={"q": "tea", "domain": "garden"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "domain"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/recommendations", {"user": "t1", "top_k": 0}, 422, "top_k"),
        ("/v1/recommendations", {"user": "t1", "top_k": 500}, 422, "top_k"),
        ("/v1/recommendations", {"user": "t1", "colour": "red"}, 422, "colour"),
        ("/v1/recommendations", {"history": ["B0NOTANITEM1"]}, 422, "history[0]"),
        ("/v1/recommendations", {"history": ["Lodge skillet"] * 51}, 413, "history"),
        ("/v1/recommendations", {"user": "t1", "domain": "garden"}, 422, "domain"),
        ("/v1/recommendations", {"user": "no-such-user"}, 404, "user"),
        ("/v1/recommendations", {"top_k": 3}, 422, "history"),
        ("/v1/recommendations", {"user": "t1", "model": "magic"}, 404, "model"),
        ("/v1/rerank", {"query": "t1", "documents": []}, 422, "documents"),
        ("/v1/rerank", {"query": "t1", "documents": ["x"] * 31}, 413, "documents"),
        ("/v1/chat/completions", {"model": "popularity", "messages": []}, 422, "messages"),
        (
            "/v1/chat/completions",
            {"model": "popularity", "messages": [{"role": "user", "content": '{"user": 3'}]},
            422,
            "messages[0].content",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    http: httpx.Client, path: str, body: dict[str, object], status: int, param: str
) -> None:
    resp = http.post(path, json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"]


def test_body_too_large_is_413(http: httpx.Client) -> None:
    resp = http.post("/v1/recommendations", json={"user": "t1", "exclude": ["x" * 1000] * 70})
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "body"


def test_auth_request_ids_and_metrics(api_server: ApiServer, http: httpx.Client) -> None:
    anonymous = httpx.post(f"{api_server.url}/v1/recommendations", json={"user": "t1"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{api_server.url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    # health and metrics stay open (probes, scrapers)
    assert httpx.get(f"{api_server.url}/healthz").status_code == 200
    resp = http.get("/v1/models", headers={"X-Request-ID": "trace-42"})
    assert resp.headers["x-request-id"] == "trace-42"
    assert resp.headers["server-timing"].startswith("app;dur=")  # the server's share
    generated = http.get("/v1/models").headers["x-request-id"]
    assert len(generated) == 16
    http.post("/v1/recommendations", json={"user": "t1", "model": "popularity+verbalizer"})
    text = httpx.get(f"{api_server.url}/metrics").text
    assert 'recbridge_http_requests_total{method="GET",route="/v1/models",status="200"}' in text
    assert 'recbridge_http_rejected_total{reason="invalid_api_key"}' in text
    assert 'recbridge_llm_calls_total{pipeline="popularity+verbalizer"}' in text
    assert "recbridge_http_request_seconds_bucket" in text
    # the key never reaches the log
    assert api_server.key is not None and api_server.key not in api_server.log()
    assert "trace-42" in api_server.log()
