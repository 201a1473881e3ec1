"""The chat stream's chunks: the text answer split so that each item's lines travel with the
item as data (``recbridge`` on the chunk), the finish chunk with the cost; crafted outcomes."""

from __future__ import annotations

import json

from agent.api.chat import answer_text, done_info, stream_events, stream_pieces
from agent.api.schemas import ChatCompletionRequest
from agent.service.queries import RankedItem, RecommendOutcome, Resolved, Usage


def _outcome(n: int, fallback: str | None = None) -> RecommendOutcome:
    items = [
        RankedItem(
            item_id=f"B00{i}",
            title=f"Item {i}",
            display_title=f"Item {i}",
            domain="food",
            score=1.0 - i / 10,
            retrieval_rank=n - i,
            retrieval_score=0.5,
            reason=f"because {i}",
        )
        for i in range(n)
    ]
    return RecommendOutcome(
        user_id="t1",
        pipeline="sasrec-id+listwise",
        domain="food",
        history=["A1", "A2"],
        items=items,
        fallback=fallback,
        resolved=[Resolved(ref="tea", item_id="A2", title="Tea", how="nearest", similarity=0.8)],
        usage=Usage(prompt_tokens=90, completion_tokens=10, llm_calls=1),
        seconds={"retrieve": 0.01, "rerank": 1.5},
    )


def test_pieces_are_the_text_answer_with_one_chunk_per_item() -> None:
    outcome = _outcome(3, fallback="unusable_answer")
    pieces = stream_pieces(outcome)
    assert "".join(text for text, _ in pieces).rstrip("\n") == answer_text(outcome, False)
    kinds = [data["type"] if data else None for _, data in pieces]
    assert kinds == ["meta", "item", "item", "item", None]  # the fallback note last
    meta = pieces[0][1]
    assert meta is not None and meta["resolved"][0]["how"] == "nearest"
    for rank, (text, data) in enumerate(pieces[1:4], start=1):
        assert data is not None and data["rank"] == rank
        assert text.startswith(f"{rank}. ") and data["item"]["item_id"] in text
        assert "Why:" in text


def test_an_empty_list_streams_its_note_and_the_finish_carries_the_cost() -> None:
    outcome = _outcome(0)
    pieces = stream_pieces(outcome)
    assert [d["type"] if d else None for _, d in pieces] == ["meta", None]
    info = done_info(outcome)
    assert info["usage"]["total_tokens"] == 100 and info["seconds"]["rerank"] == 1.5
    assert "items" not in info and info["type"] == "done"


def test_events_keep_openai_chunks_and_end_in_done() -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "user: t1"}], "stream": True}
    )
    events = list(stream_events(body, _outcome(2), "rid1"))
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-rid1" for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c.get("recbridge", {}).get("type") for c in chunks] == [
        None,
        "meta",
        "item",
        "item",
        "done",
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
