"""The API when its LLM fails: 500s and an LLM server killed mid-request give the
retriever's answer flagged ``"fallback"`` (503 when the request forbids it); score fusion on
the LLM's answer (``rerank.fusion_weight``); the concurrency limit (429), a schemathesis run
over ``/openapi.json`` with no server error, and a graceful shutdown that finishes the request
in flight.

The server here is the real ``recbridge serve`` on the openai backend; its "LLM server" is the
loopback fault server (tests/llm_fault_server.py), scripted per test. The tests run in file
order: the last ones kill the LLM server and then stop the API server.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.api_fixtures import ApiServer, FaultLLM
from tests.llm_fault_server import Step

pytestmark = pytest.mark.integration

LLM_PIPELINE = "popularity+listwise"
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # as JSON escapes it


def _recommend(server: ApiServer, **body: object) -> httpx.Response:
    payload = {"user": "t1", "top_k": 5, "model": LLM_PIPELINE, **body}
    return httpx.post(f"{server.url}/v1/recommendations", json=payload, timeout=120)


def _ids(resp: httpx.Response) -> list[str]:
    return [it["item_id"] for it in resp.json()["items"]]


def test_llm_errors_fall_back_to_the_retrievers_answer(
    fault_api_server: ApiServer, fault_llm: FaultLLM
) -> None:
    retriever_only = _ids(_recommend(fault_api_server, model="popularity"))
    fault_llm.server.script.append(Step(action="status", status=500))
    resp = _recommend(fault_api_server)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["fallback"] == "llm_unavailable" and "HTTP 500" in body["error"]
    assert _ids(resp) == retriever_only
    assert all("llm unavailable" in it["reason"] for it in body["items"])
    # The same failure where the request forbids a fallback: 503, never a silent answer.
    fault_llm.server.script.append(Step(action="status", status=500))
    strict = _recommend(fault_api_server, allow_fallback=False)
    assert strict.status_code == 503 and "LLM" in strict.json()["error"]["message"]
    # The chat endpoint says so too.
    fault_llm.server.script.append(Step(action="status", status=503))
    chat = httpx.post(
        f"{fault_api_server.url}/v1/chat/completions",
        json={"model": LLM_PIPELINE, "messages": [{"role": "user", "content": "user: t1"}]},
        timeout=120,
    )
    assert chat.json()["fallback"] == "llm_unavailable"
    assert "the LLM was unavailable" in chat.json()["choices"][0]["message"]["content"]
    metrics = httpx.get(f"{fault_api_server.url}/metrics").text
    assert (
        f'recbridge_fallbacks_total{{kind="llm_unavailable",pipeline="{LLM_PIPELINE}"}} 2.0'
        in metrics
    )


def test_fusion_weight_one_keeps_the_retrievers_order(
    fault_api_server: ApiServer, fault_llm: FaultLLM
) -> None:
    """The LLM answers the retriever's head reversed; with rerank.fusion_weight=1.0 (this
    server's) the fused order is the retriever's, in /v1/recommendations and /v1/rerank."""
    retriever_only = _ids(_recommend(fault_api_server, model="popularity"))
    assert len(retriever_only) == 5  # = rerank.top_n: the whole answer is the reranked head
    fault_llm.server.script.append(Step(reply=json.dumps({"ranking": retriever_only[::-1]})))
    resp = _recommend(fault_api_server)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["fallback"] is None and body["usage"]["llm_calls"] >= 1
    assert _ids(resp) == retriever_only  # unfused, it would be reversed
    assert all(it["rerank_score"] is not None for it in body["items"])
    fused = "fused with the retriever's score (weight 1)"
    assert all(fused in it["reason"] for it in body["items"])

    docs = retriever_only[::-1]

    def rerank(model: str) -> list[str]:
        resp = httpx.post(
            f"{fault_api_server.url}/v1/rerank",
            json={"model": model, "query": "t1", "documents": docs},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["fallback"] is None
        return [docs[r["index"]] for r in resp.json()["results"]]

    by_retriever = rerank("popularity")
    fault_llm.server.script.append(Step(reply=json.dumps({"ranking": by_retriever[::-1]})))
    assert rerank(LLM_PIPELINE) == by_retriever


def test_concurrency_limit_answers_429_with_retry_after(
    fault_api_server: ApiServer, fault_llm: FaultLLM
) -> None:
    fault_llm.server.script.extend([Step(seconds=2.0), Step(seconds=2.0)])
    results: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: results.append(_recommend(fault_api_server)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.8)  # both are waiting for the slow LLM now (server limit: 2 in flight)
    busy = _recommend(fault_api_server)
    for thread in threads:
        thread.join()
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "rate_limit_error"
    assert [r.status_code for r in results] == [200, 200]


def _schemathesis(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """One seeded schemathesis run with no example database (the same cases every time),
    checking for server errors; JUnit and HAR reports in ``out``."""
    st = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(st).exists():
        pytest.skip("schemathesis is not installed (dev extra)")
    out.mkdir(parents=True, exist_ok=True)
    argv = [st, "run", f"{url}/openapi.json", "--checks", "not_a_server_error"]
    argv += ["--max-examples", "20", "--workers", "1", "--seed", "42"]
    argv += ["--generation-database", "none", "--request-timeout", "60"]
    argv += ["--report", "junit,har", "--report-har-path", str(out / "run.har")]
    argv += ["--report-dir", str(out), *extra]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "5xx" not in run.stdout.lower().replace("no 5xx", "")
    return run


def test_schemathesis_finds_no_server_error(fault_api_server: ApiServer, tmp_path: Path) -> None:
    """Generated requests over every operation; then the POST bodies again with strings from all
    of Unicode, lone surrogates included (the ``unicode_escape`` codec: they reach the server as
    JSON's ``\\ud800`` escapes). Only the bodies: schemathesis 4.32.5 itself fails encoding a
    lone surrogate in a query string it generates."""
    _schemathesis(fault_api_server.url, tmp_path / "all")
    _schemathesis(
        fault_api_server.url,
        tmp_path / "unicode",
        "--generation-codec",
        "unicode_escape",
        "--include-method",
        "POST",
    )
    # Lone surrogates were sent, and refused as what they are (422 naming the field).
    har = (tmp_path / "unicode" / "run.har").read_text(encoding="utf-8")
    entries = json.loads(har)["log"]["entries"]
    surrogates = [
        e
        for e in entries
        if _SURROGATE.search((e["request"].get("postData") or {}).get("text", ""))
    ]
    assert surrogates and all(e["response"]["status"] < 500 for e in surrogates)
    assert any(e["response"]["status"] == 422 for e in surrogates)


def test_llm_server_killed_mid_request_gives_the_fallback_answer(
    fault_api_server: ApiServer, fault_llm: FaultLLM
) -> None:
    fault_llm.server.script.append(Step(seconds=60.0))  # the LLM is thinking...
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(_recommend(fault_api_server)))
    started = time.monotonic()
    thread.start()
    time.sleep(1.5)
    fault_llm.server.stop()  # ...and dies: its connections are cut
    thread.join(timeout=60)
    assert answer and answer[0].status_code == 200, answer
    assert answer[0].json()["fallback"] == "llm_unavailable"
    assert time.monotonic() - started < 12  # the cut connection, not the 20 s timeout
    health = httpx.get(f"{fault_api_server.url}/healthz", timeout=30)
    assert health.status_code == 503 and not health.json()["llm"]["ok"]
    assert health.json()["store"]["ok"]
    fault_llm.restart()  # back on its port: the long-lived client reconnects
    assert httpx.get(f"{fault_api_server.url}/healthz", timeout=30).status_code == 200
    again = _recommend(fault_api_server)
    assert again.status_code == 200 and again.json()["fallback"] != "llm_unavailable"
    assert again.json()["usage"]["llm_calls"] >= 1


def test_graceful_shutdown_finishes_the_request_in_flight(
    fault_api_server: ApiServer, fault_llm: FaultLLM
) -> None:
    fault_llm.server.script.append(Step(seconds=3.0))
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(_recommend(fault_api_server)))
    thread.start()
    time.sleep(1.0)
    code = fault_api_server.stop()  # SIGTERM while the request waits for the LLM
    thread.join(timeout=30)
    # uvicorn exits by re-raising the signal it handled, once the shutdown is complete
    assert code in (0, -signal.SIGTERM), fault_api_server.log()[-2000:]
    assert answer and answer[0].status_code == 200 and len(answer[0].json()["items"]) == 5
    assert "service closed" in fault_api_server.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{fault_api_server.url}/healthz", timeout=5)
