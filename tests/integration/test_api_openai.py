"""The chat API through the official clients: ``openai`` (chat, JSON, stream, follow-up turns,
errors) and LangChain's ``ChatOpenAI``, against the real ``recbridge serve`` (local LLM)."""

from __future__ import annotations

import json

import openai
import pytest
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.api_fixtures import SERVED, ApiServer

pytestmark = pytest.mark.integration


def _client(server: ApiServer, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.v1, api_key=key or server.key or "none", timeout=600, max_retries=0
    )


def _user(text: str) -> ChatCompletionMessageParam:
    return {"role": "user", "content": text}


def _ranked_ids(text: str) -> list[str]:
    """Item ids of the readable answer's numbered lines ("1. Title [ID] (score ...)")."""
    return [
        line.rsplit("[", 1)[1].split("]", 1)[0]
        for line in text.splitlines()
        if line[:1].isdigit() and "[" in line
    ]


def test_models_lists_the_served_pipelines(api_server: ApiServer) -> None:
    ids = [m.id for m in _client(api_server).models.list()]
    assert ids == SERVED


def test_chat_answers_a_ranked_list_with_usage(api_server: ApiServer) -> None:
    client = _client(api_server)
    reply = client.chat.completions.create(
        model="popularity+verbalizer",
        messages=[
            {"role": "system", "content": "You recommend products."},
            {"role": "user", "content": "user: t1\ntop_k: 4"},
        ],
    )
    assert reply.model == "popularity+verbalizer"
    content = reply.choices[0].message.content or ""
    ids = _ranked_ids(content)
    assert len(ids) == 4 and len(set(ids)) == 4
    # The LLM reranked: it was called, and its tokens are the usage.
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    extra = reply.model_extra or {}
    assert extra["fallback"] is None
    assert [it["item_id"] for it in extra["recommendation"]["items"]] == ids


def test_json_response_format_and_json_messages(api_server: ApiServer) -> None:
    reply = _client(api_server).chat.completions.create(
        model="text-knn",
        messages=[{"role": "user", "content": json.dumps({"user": "t1", "top_k": 3})}],
        response_format={"type": "json_object"},
    )
    body = json.loads(reply.choices[0].message.content or "")
    assert body["pipeline"] == "text-knn" and body["user_id"] == "t1"
    assert [it["rank"] for it in body["items"]] == [1, 2, 3]
    assert all(it["title"] and " by " in it["reason"] for it in body["items"])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_stream_gives_the_same_answer_in_chunks_then_usage(api_server: ApiServer) -> None:
    client = _client(api_server)
    messages = [_user("user: t1\ntop_k: 3")]
    whole = client.chat.completions.create(model="popularity", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="popularity",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.rstrip("\n") == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_follow_up_turn_excludes_items_and_switches_domain(api_server: ApiServer) -> None:
    client = _client(api_server)
    first_turn = _user("user: t1\ntop_k: 3")
    first = client.chat.completions.create(model="popularity", messages=[first_turn])
    shown = _ranked_ids(first.choices[0].message.content or "")
    first_domain = (first.model_extra or {})["recommendation"]["domain"]
    # Exclude the first answer's top item: the rest moves up.
    again = client.chat.completions.create(
        model="popularity",
        messages=[
            first_turn,
            {"role": "assistant", "content": first.choices[0].message.content or ""},
            _user(f"exclude: {shown[0]}"),
        ],
    )
    assert _ranked_ids(again.choices[0].message.content or "")[:2] == shown[1:3]
    # Switch the domain: every item is of the other one now.
    other = "kitchen" if first_domain == "food" else "food"
    switched = client.chat.completions.create(
        model="popularity",
        messages=[first_turn, _user(f"domain: {other}")],
    )
    rec = (switched.model_extra or {})["recommendation"]
    assert rec["domain"] == other and {it["domain"] for it in rec["items"]} == {other}


def test_client_errors_are_typed_and_name_the_problem(api_server: ApiServer) -> None:
    client = _client(api_server)
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(
            model="sasrec-text", messages=[{"role": "user", "content": "user: t1"}]
        )
    with pytest.raises(openai.UnprocessableEntityError, match="history") as bad:
        client.chat.completions.create(
            model="popularity", messages=[{"role": "user", "content": "history: B0NOTANITEM1"}]
        )
    assert bad.value.body["param"] == "history[0]"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError, match="top_k"):
        client.chat.completions.create(
            model="popularity", messages=[{"role": "user", "content": "user: t1\ntop_k: many"}]
        )
    with pytest.raises(openai.NotFoundError, match="user"):
        client.chat.completions.create(
            model="popularity", messages=[{"role": "user", "content": "user: nobody-here"}]
        )
    with pytest.raises(openai.AuthenticationError):
        _client(api_server, key="wrong-key").models.list()


def test_langchain_chat_openai_works_unchanged(api_server: ApiServer) -> None:
    chat = ChatOpenAI(
        base_url=api_server.v1,
        api_key=api_server.key,  # type: ignore[arg-type]
        model="popularity",
        timeout=300,
        max_retries=0,
    )
    answer = chat.invoke("user: t1\ntop_k: 2")
    assert len(_ranked_ids(str(answer.content))) == 2
    streamed = "".join(str(chunk.content) for chunk in chat.stream("user: t1\ntop_k: 2"))
    assert streamed.rstrip("\n") == answer.content
