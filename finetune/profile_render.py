"""Next-interest profiles: the JSON, its prompt, its parsing, its text as a retrieval query.

A next-interest profile says what a shopper buys next in one domain as three short lists,
``{"categories": [...], "kinds": [...], "brands": [...]}``. One template
(``profile.next.template``, ``prompts/profile_next.j2``) renders the prompt from the history's
most recent titles (all domains) and the target domain; ``NextInterestPrompt`` is the one code
path that renders it, for training examples (``encode``) and for generation (``request``), so
an adapter is trained on exactly the prompt it is asked at inference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import NextInterestSettings
from agent.data.schema import Dataset
from agent.llm.local_backend import chat_prompt_ids
from agent.llm.types import ChatMessage, GenerationRequest
from agent.profiles.parsing import ParseError, extract_json
from agent.prompts import PromptTemplate, load_template
from finetune.render import Encoded

FIELDS = ("categories", "kinds", "brands")


class NextInterest(BaseModel):
    """A domain profile of the next purchases (the LLM may add keys: ignored)."""

    model_config = ConfigDict(extra="ignore")

    categories: list[str] = Field(default_factory=list)
    kinds: list[str] = Field(default_factory=list)
    brands: list[str] = Field(default_factory=list)

    def answer_json(self) -> str:
        """The training answer: compact JSON, keys in schema order."""
        return json.dumps(
            {"categories": self.categories, "kinds": self.kinds, "brands": self.brands},
            ensure_ascii=False,
        )

    @property
    def empty(self) -> bool:
        return not (self.categories or self.kinds or self.brands)


def next_interest_schema(max_items: int, phrase_chars: int) -> dict[str, Any]:
    """The schema for constrained decoding: closed object, three bounded string lists."""
    phrases = {
        "type": "array",
        "items": {"type": "string", "maxLength": phrase_chars},
        "maxItems": max_items,
    }
    return {
        "type": "object",
        "properties": {name: phrases for name in FIELDS},
        "required": list(FIELDS),
        "additionalProperties": False,
    }


def _clean(values: Sequence[str], limit: int) -> list[str]:
    """Stripped, non-empty, first of each case-insensitive duplicate, at most ``limit``."""
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        phrase = " ".join(str(value).split())
        if phrase and phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            out.append(phrase)
    return out[:limit]


def parse_next_interest(text: str, max_items: int) -> tuple[NextInterest, bool]:
    """A validated profile from LLM text (JSON found and repaired as for hierarchical
    profiles) and whether it needed repair; ParseError when none is usable or it is empty."""
    data, repaired = extract_json(text)
    try:
        parsed = NextInterest.model_validate(data)
    except ValidationError as exc:
        raise ParseError(f"wrong schema: {exc.errors()[0]['msg']}") from None
    profile = NextInterest(**{f: _clean(getattr(parsed, f), max_items) for f in FIELDS})
    if profile.empty:
        raise ParseError("empty profile: no category, kind or brand")
    return profile, repaired


def query_text(profile: NextInterest) -> str:
    """The text a profile is embedded as to query the item index: its phrases, kinds first
    (the item text is a title: kinds and brands are what titles are made of)."""
    phrases = _clean([*profile.kinds, *profile.brands, *profile.categories], 3 * 64)
    return "; ".join(phrases)


class NextInterestPrompt:
    """Renders (and tokenises) the next-interest prompt of a history for a target domain."""

    def __init__(self, data: Dataset, cfg: NextInterestSettings) -> None:
        self.data = data
        self.cfg = cfg
        self.template: PromptTemplate = load_template(cfg.template)

    def shown(self, history: Sequence[str]) -> list[str]:
        """The history items the prompt shows: the most recent ``history_items`` known ones."""
        known = [i for i in history if i in self.data.items]
        return known[-self.cfg.history_items :]

    def messages(self, history: Sequence[str], domain: str) -> list[ChatMessage]:
        items = [self.data.items[i] for i in self.shown(history)]
        return self.template.render(
            items=items,
            domain=domain,
            title_chars=self.cfg.title_chars,
            max_items=self.cfg.max_list_items,
        )

    def request(
        self, history: Sequence[str], domain: str, adapter: str | None = None
    ) -> GenerationRequest:
        schema = (
            next_interest_schema(self.cfg.max_list_items, self.cfg.phrase_chars)
            if self.cfg.constrained
            else None
        )
        return GenerationRequest(
            messages=self.messages(history, domain),
            max_tokens=self.cfg.max_tokens,
            json_schema=schema,
            adapter=adapter,
        )

    def encode(
        self, tokenizer: Any, example_id: str, history: Sequence[str], domain: str, answer: str
    ) -> Encoded:
        """Prompt ids (the inference tokenisation) + the answer's ids and the end token; the
        LM loss is on the answer only (no labels: ``label_ids`` empty)."""
        prompt = chat_prompt_ids(tokenizer, self.messages(history, domain))
        ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        return Encoded(example_id, prompt, list(ids), [], 0)

    def history_titles_text(self, history: Sequence[str]) -> str:
        """The titles the prompt shows, as one query text (the no-LLM baseline)."""
        titles = [self.data.items[i].title for i in self.shown(history)]
        return "; ".join(" ".join(t.split())[: self.cfg.title_chars] for t in titles)
