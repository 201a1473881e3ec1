"""Chat completions over the service: the conversation's user turns fold into one request
(``agent.service.messages``), the ranked list comes back as text or JSON, whole or streamed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from agent.api.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    ChatUsage,
    RecommendationResponse,
)
from agent.service.errors import BadRequest
from agent.service.messages import fold_conversation
from agent.service.queries import Query, RankedItem, RecommendOutcome


def chat_query(body: ChatCompletionRequest) -> Query:
    """The request the conversation adds up to (system and assistant turns are context only)."""
    turns = [(pos, m.text()) for pos, m in enumerate(body.messages) if m.role == "user"]
    if not turns:
        raise BadRequest("messages: no user message", "messages")
    query = fold_conversation([text for _, text in turns])
    return replace(
        query,
        pipeline=body.model,
        allow_fallback=body.allow_fallback,
        template=body.template,
        adapter=body.adapter,
    )


def wants_json(body: ChatCompletionRequest) -> bool:
    return body.response_format is not None and body.response_format.type != "text"


def answer_json(outcome: RecommendOutcome) -> str:
    """The JSON answer: the ranked items with ids, titles, scores and reasons."""
    return json.dumps(
        {
            "user_id": outcome.user_id,
            "domain": outcome.domain,
            "pipeline": outcome.pipeline,
            "items": [
                {
                    "rank": rank,
                    "item_id": it.item_id,
                    "title": it.title,
                    "display_title": it.display_title,
                    "score": it.score,
                    "reason": it.reason,
                    "because": it.because,
                }
                for rank, it in enumerate(outcome.items, start=1)
            ],
            "fallback": outcome.fallback,
            "exclude_unmatched": outcome.exclude_unmatched,
        },
        ensure_ascii=False,
    )


def _header(outcome: RecommendOutcome) -> str:
    return (
        f"Top {len(outcome.items)} in {outcome.domain} for {outcome.user_id} "
        f"({outcome.pipeline}):\n"
    )


def _item_lines(rank: int, it: RankedItem) -> list[str]:
    return [
        f"{rank}. {it.display_title} [{it.item_id}] (score {it.score:.3f})\n",
        f"   Why: {it.reason}\n",
    ]


def _notes(outcome: RecommendOutcome) -> list[str]:
    """What follows the items: an empty list, exclusions that removed nothing, the
    reranker's reason, a fallback."""
    lines = []
    if not outcome.items:
        lines.append("No items left to recommend.\n")
    if outcome.exclude_unmatched:
        lines.append(
            f"Note: not in the list, nothing excluded: {', '.join(outcome.exclude_unmatched)}\n"
        )
    if outcome.reason:
        lines.append(f"The reranker's reason for the list: {outcome.reason}\n")
    if outcome.fallback == "llm_unavailable":
        lines.append("Note: the LLM was unavailable; this is the retriever's order.\n")
    elif outcome.fallback:
        lines.append("Note: the LLM's answer was unusable; this is the retriever's order.\n")
    return lines


def answer_lines(outcome: RecommendOutcome) -> list[str]:
    """The readable answer, line by line."""
    items = [line for rank, it in enumerate(outcome.items, 1) for line in _item_lines(rank, it)]
    return [_header(outcome), *items, *_notes(outcome)]


def answer_text(outcome: RecommendOutcome, as_json: bool) -> str:
    return answer_json(outcome) if as_json else "".join(answer_lines(outcome)).rstrip("\n")


def completion(
    body: ChatCompletionRequest,
    outcome: RecommendOutcome,
    response: RecommendationResponse,
    request_id: str,
) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=int(time.time()),
        model=outcome.pipeline,
        choices=[
            ChatChoice(message=ChatMessageOut(content=answer_text(outcome, wants_json(body))))
        ],
        usage=ChatUsage.of(outcome.usage),
        fallback=outcome.fallback,
        recommendation=response,
    )


def _event(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def stream_pieces(outcome: RecommendOutcome) -> list[tuple[str, dict[str, Any] | None]]:
    """The text answer in stream chunks, each with what it shows as data (RecBridge's
    ``recbridge`` key on a chunk; OpenAI clients ignore it): the list's header with the request
    as read, then one chunk per item (its two lines) with the item and its final rank."""
    meta = {
        "type": "meta",
        "user_id": outcome.user_id,
        "domain": outcome.domain,
        "pipeline": outcome.pipeline,
        "history": outcome.history,
        "resolved": [r.model_dump() for r in outcome.resolved],
    }
    pieces: list[tuple[str, dict[str, Any] | None]] = [(_header(outcome), meta)]
    for rank, item in enumerate(outcome.items, start=1):
        text = "".join(_item_lines(rank, item))
        pieces.append((text, {"type": "item", "rank": rank, "item": item.model_dump()}))
    pieces.extend((line, None) for line in _notes(outcome))
    return pieces


def done_info(outcome: RecommendOutcome) -> dict[str, Any]:
    """What the finish chunk carries: everything but the items and the request already sent."""
    info = outcome.model_dump(exclude={"items", "history", "resolved"})
    info["usage"] = {**info["usage"], "total_tokens": outcome.usage.total_tokens}
    return {"type": "done", **info}


def stream_events(
    body: ChatCompletionRequest, outcome: RecommendOutcome, request_id: str
) -> Iterator[str]:
    """``chat.completion.chunk`` events: the role, the answer line by line (an item's two lines
    in one chunk, with the item as data), the finish (and the usage when
    ``stream_options.include_usage``), then ``[DONE]``. The list is ranked before the first
    chunk: streaming paces the delivery, not the ranking."""
    base = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": outcome.pipeline,
    }
    pieces: list[tuple[str, dict[str, Any] | None]] = (
        [(answer_json(outcome), None)] if wants_json(body) else stream_pieces(outcome)
    )
    include_usage = body.stream_options is not None and body.stream_options.include_usage

    def chunk(
        delta: dict[str, str], finish: str | None = None, data: dict[str, Any] | None = None
    ) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        if data is not None:
            extra["recbridge"] = data
        return _event({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    for text, data in pieces:
        yield chunk({"content": text}, data=data)
    yield chunk({}, "stop", done_info(outcome))
    if include_usage:
        yield _event({**base, "choices": [], "usage": ChatUsage.of(outcome.usage).model_dump()})
    yield "data: [DONE]\n\n"
