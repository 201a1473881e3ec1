"""The chat message format, pipeline names, API keys and the answer rendering, on crafted
inputs (no server: the parsers and renderers are plain functions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.api.auth import bearer_ok, load_keys
from agent.api.chat import answer_lines, chat_query, stream_events
from agent.api.schemas import ChatCompletionRequest
from agent.config import ConfigError, ServeSettings
from agent.service.errors import BadRequest, NotFound
from agent.service.messages import fold_conversation, looks_like_id, parse_message, split_list
from agent.service.pipelines import PipelineSpec
from agent.service.queries import RankedItem, RecommendOutcome, Usage


def test_plain_text_message_with_every_key() -> None:
    fields = parse_message(
        "user: t1\nhistory: B000BIZT3E; Lodge cast iron skillet\n"
        "candidates: B002IYDXW8, B00004OCKR\ndomain: kitchen\nk: 5\nexclude: B00004OCKR"
    )
    assert fields == {
        "user": "t1",
        "history": ["B000BIZT3E", "Lodge cast iron skillet"],
        "candidates": ["B002IYDXW8", "B00004OCKR"],
        "domain": "kitchen",
        "top_k": 5,
        "exclude": ["B00004OCKR"],
    }


def test_titles_with_commas_stay_whole_and_lines_continue_a_list() -> None:
    assert split_list("Salt, Pepper and Herbs, 3-Pack") == ["Salt, Pepper and Herbs, 3-Pack"]
    assert split_list("B000BIZT3E,B002IYDXW8") == ["B000BIZT3E", "B002IYDXW8"]
    fields = parse_message("history: Green tea\nCoffee beans, 1 lb\ntop_k: 2")
    assert fields["history"] == ["Green tea", "Coffee beans, 1 lb"] and fields["top_k"] == 2


def test_a_message_without_keys_is_a_history() -> None:
    assert parse_message("Green tea\nB000BIZT3E") == {"history": ["Green tea", "B000BIZT3E"]}


def test_json_message_and_aliases() -> None:
    fields = parse_message(json.dumps({"user_id": "t9", "items": ["A1B2C3D4"], "k": "3"}))
    assert fields == {"user": "t9", "history": ["A1B2C3D4"], "top_k": 3}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty message"),
        ('{"user": ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"colour": "red"}', "unknown key(s) colour"),
        ('{"history": {"a": 1}}', "expected a list"),
        ("user: t1\ntop_k: 0", "at least 1"),
        ("user: t1\ntop_k: lots", "whole number"),
        ("user: t1\nplease hurry", "expected 'key: value' lines"),
    ],
)
def test_bad_messages_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_message(text, "messages[0].content")
    assert err.value.param is not None and err.value.param.startswith("messages[0].content")


def test_follow_up_turns_refine_and_exclusions_accumulate() -> None:
    query = fold_conversation(
        ["user: t1\ntop_k: 3", "exclude: B000BIZT3E", "domain: food\nexclude: B002IYDXW8"]
    )
    assert query.user == "t1" and query.top_k == 3 and query.domain == "food"
    assert query.exclude == ("B000BIZT3E", "B002IYDXW8")
    assert query.fields["domain"] == "messages[2].content"
    with pytest.raises(BadRequest, match="no user and no history"):
        fold_conversation(["domain: food"])


def test_chat_query_reads_user_turns_only() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "text-knn",
            "allow_fallback": False,
            "messages": [
                {"role": "system", "content": "user: ignored"},
                {"role": "user", "content": [{"type": "text", "text": "user: t1"}]},
                {"role": "assistant", "content": "1. Something [B000BIZT3E]"},
                {"role": "user", "content": "top_k: 2"},
            ],
        }
    )
    query = chat_query(body)
    assert (query.user, query.top_k, query.pipeline, query.allow_fallback) == (
        "t1", 2, "text-knn", False,
    )  # fmt: skip
    assert looks_like_id("B000BIZT3E") and not looks_like_id("Green tea")


def test_pipeline_names() -> None:
    spec = PipelineSpec.parse("sasrec-id+listwise+profile")
    assert (spec.retriever, spec.reranker, spec.use_profile, spec.uses_llm) == (
        "sasrec-id", "listwise", True, True,
    )  # fmt: skip
    assert spec.name == "sasrec-id+listwise+profile"
    assert not PipelineSpec.parse("text-knn").uses_llm
    with pytest.raises(NotFound, match="unknown retriever"):
        PipelineSpec.parse("gpt-4")
    with pytest.raises(NotFound, match="at most one reranker"):
        PipelineSpec.parse("text-knn+listwise+verbalizer")


def test_api_keys_from_settings_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops\nk-file-1  # rotated 2026-11\n\n", encoding="utf-8")
    keys = load_keys(ServeSettings(api_keys=["k-env"], api_keys_file=keys_file))
    assert keys == ["k-env", "k-file-1"]
    assert bearer_ok("Bearer k-file-1", keys) and bearer_ok("bearer k-env", keys)
    assert not bearer_ok("Bearer k-file", keys) and not bearer_ok(None, keys)
    assert not bearer_ok("k-env", keys)
    assert bearer_ok(None, [])  # no keys: an open server
    with pytest.raises(ConfigError, match="not found"):
        load_keys(ServeSettings(api_keys_file=tmp_path / "missing"))


def _outcome(fallback: str | None = None) -> RecommendOutcome:
    items = [
        RankedItem(item_id=f"B00000000{i}", title=f"Tea & cups {i} " + "long " * 30,
                   display_title=f"Tea & cups {i} long…", domain="food",
                   score=1.0 - i / 10, retrieval_rank=i + 1, retrieval_score=0.5,
                   reason=f"follows your teapot; ranked #{i + 1} by popularity",
                   because=["X1Y2Z3W4"])
        for i in range(2)
    ]  # fmt: skip
    return RecommendOutcome(
        user_id="t1", pipeline="popularity+listwise", domain="food", history=["X1Y2Z3W4"],
        items=items, fallback=fallback, usage=Usage(prompt_tokens=10, completion_tokens=2,
                                                    llm_calls=1),
    )  # fmt: skip


def test_readable_answer_and_stream_events() -> None:
    lines = answer_lines(_outcome("llm_unavailable"))
    # The display title (not the whole ad copy), then the item's own reason.
    assert lines[1] == "1. Tea & cups 0 long… [B000000000] (score 1.000)\n"
    assert lines[2] == "   Why: follows your teapot; ranked #1 by popularity\n"
    assert "LLM was unavailable" in lines[-1]
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": "user: t1"}]}
    )  # fmt: skip
    events = list(stream_events(body, _outcome(), "rid"))
    assert events[-1] == "data: [DONE]\n\n"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"])
    assert text == "".join(answer_lines(_outcome()))
    assert payloads[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 2,
                                     "total_tokens": 12}  # fmt: skip
