"""Listwise generative reranking (RankGPT): the LLM writes the permutation of labelled candidates.

Prompt ``prompts/rerank_listwise.j2``: recent history titles, optional profile, candidates as
``[A] title`` lines; the answer is ``{"ranking": ["B", "A", ...]}``. Where the backend can
constrain decoding (vLLM structured outputs; xgrammar locally) the JSON schema makes the
labels an enum and the list exactly one window long; otherwise (or when the server ignores it)
the text is read leniently, in this order:

1. a JSON object (fenced, wrapped in prose or cut off at ``max_tokens``: ``extract_json``)
   whose ``ranking`` is a list (each entry a label, ``[B]``, an item id or a copied title) or a
   string in one of the text forms below; a JSON object without it is the wrong format;
2. bracketed labels anywhere: ``[B] > [A] > [C]``, or the list echoed as ``[A] title`` lines;
3. line by line (also split at ``>``): bare labels (``B, A, C``; ``1. B``) or copied titles.

Every entry of a JSON ranking counts (unknown ones are invented ids); in free text only
label-like tokens and titles count, prose is skipped. Then ``analyse_answer``: duplicates
dropped, invented and history ids dropped and counted, missing candidates appended in the
window's given order. An answer with no candidate in it leaves the window as it was (counted
as ``wrong_format`` when nothing could be read); a user with no usable window falls back to
retrieval order, flagged.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.llm.backend import LLMBackend
from agent.llm.types import ChatMessage, GenerationRequest, GenerationResult
from agent.profiles.parsing import ParseError, extract_json
from agent.prompts import PromptTemplate
from agent.rerank.analysis import analyse_answer
from agent.rerank.base import Candidate, RerankRequest
from agent.rerank.labels import LabelStyle, make_labels
from agent.rerank.window import WindowAnswer, WindowedReranker

_BRACKETED = re.compile(r"\[\s*([A-Za-z]|\d{1,3})\s*\]")
_LEADING_BRACKET = re.compile(r"^\s*\[\s*([A-Za-z]|\d{1,3})\s*\]")
_ENUMERATION = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)]|\(\d{1,3}\)|#\d{1,3})\s+")
_SEGMENTS = re.compile(r"\s*(?:\n|>|\|)\s*")
_LABEL_RUN = re.compile(r"^[\w]{1,3}(?:\s*[,;\s]\s*[\w]{1,3})*$")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_MIN_TITLE_PREFIX = 15  # a copied title prefix shorter than this is too ambiguous to match
INVENTED = "?"  # prefix of unknown answer entries: never a real item id


def _norm(text: str) -> str:
    return _NON_ALNUM.sub(" ", html.unescape(text).lower().replace("…", " ")).strip()


@dataclass(frozen=True)
class AnswerKey:
    """What an answer of one window may name: its labels, and titles it might copy."""

    label_to_id: dict[str, str]
    style: LabelStyle
    candidate_titles: dict[str, str]  # normalised title -> id
    history_titles: dict[str, str]
    known_ids: frozenset[str]  # candidate and history ids (a model may copy an id)

    @classmethod
    def build(
        cls,
        window: Sequence[Candidate],
        labels: Sequence[str],
        style: LabelStyle,
        history: Sequence[tuple[str, str]] = (),
    ) -> AnswerKey:
        """``history``: (item_id, title) pairs of the user's history."""
        return cls(
            label_to_id={lab: c.item_id for lab, c in zip(labels, window, strict=True)},
            style=style,
            candidate_titles={_norm(c.title): c.item_id for c in window if _norm(c.title)},
            history_titles={_norm(t): i for i, t in history if _norm(t)},
            known_ids=frozenset([c.item_id for c in window] + [i for i, _ in history]),
        )

    def _label_like(self, token: str) -> bool:
        if self.style == "numbers":
            return token.isdigit() and len(token) <= 3
        return len(token) == 1 and token.isalpha()

    def label(self, token: str) -> str | None:
        """The id of a label token; the token marked invented if it only looks like one."""
        canon = token.upper() if self.style == "letters" else token.lstrip("0") or "0"
        if canon in self.label_to_id:
            return self.label_to_id[canon]
        if self._label_like(token) and (self.style == "numbers" or token.isupper()):
            return INVENTED + token
        return None

    def title(self, text: str) -> str | None:
        """The id of a candidate (or history item) whose title ``text`` copies, if any."""
        norm = _norm(text)
        if not norm:
            return None
        for titles in (self.candidate_titles, self.history_titles):
            if norm in titles:
                return titles[norm]
        if len(norm) < _MIN_TITLE_PREFIX:
            return None
        for titles in (self.candidate_titles, self.history_titles):
            for title, item_id in titles.items():
                # Prompts cut titles short: the copy is a prefix of the title, or adds to it.
                if title.startswith(norm) or (
                    len(title) >= _MIN_TITLE_PREFIX and norm.startswith(title)
                ):
                    return item_id
        return None

    def entry(self, value: Any) -> str:
        """One entry of a JSON ranking: always counts, unknown entries as invented ids."""
        text = str(value).strip()
        if match := _LEADING_BRACKET.match(text):
            return self.label(match.group(1)) or INVENTED + match.group(1)
        bare = text.strip(" \t.:;,()\"'")
        if bare in self.known_ids:
            return bare
        return self.label(bare) or self.title(bare) or INVENTED + bare

    def segment(self, text: str) -> list[str]:
        """Ids in one free-text segment: a run of labels, or one copied title; [] for prose."""
        bare = _ENUMERATION.sub("", text).strip(" \t.:;,()\"'`*")
        if not bare:
            return []
        if _LABEL_RUN.match(bare):
            tokens = [t for t in re.split(r"[\s,;]+", bare) if t]
            ids = [self.label(t) for t in tokens]
            if all(i is not None for i in ids):
                return [i for i in ids if i is not None]
        if bare in self.known_ids:
            return [bare]
        found = self.title(bare)
        return [found] if found else []


def parse_ranking(text: str, key: AnswerKey) -> tuple[list[str] | None, str | None]:
    """(ids in answer order, reason) from raw LLM text; ids None = the wrong format."""
    if not text or not text.strip():
        return None, None
    try:
        data: dict[str, Any] | None = extract_json(text)[0]
    except ParseError:
        data = None
    if data is not None:
        ranking = data.get("ranking")
        reason = data.get("reason") if isinstance(data.get("reason"), str) else None
        if isinstance(ranking, list):
            return [key.entry(v) for v in ranking], reason
        if isinstance(ranking, str):
            return _parse_text(ranking, key), reason
        return None, reason  # a JSON object of the wrong shape
    return _parse_text(text, key), None


def _parse_text(text: str, key: AnswerKey) -> list[str] | None:
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        return [key.label(t) or INVENTED + t for t in bracketed]
    ids = [i for seg in _SEGMENTS.split(text) for i in key.segment(seg)]
    return ids or None


def ranking_schema(labels: Sequence[str], with_reason: bool = False) -> dict[str, Any]:
    """The JSON schema of a window's answer: labels as an enum, exactly one per candidate
    (JSON schema cannot say "each once" in a form vLLM's grammars take; parsing drops repeats)."""
    properties: dict[str, Any] = {
        "ranking": {
            "type": "array",
            "items": {"type": "string", "enum": list(labels)},
            "minItems": len(labels),
            "maxItems": len(labels),
        }
    }
    if with_reason:
        properties["reason"] = {"type": "string", "maxLength": 200}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


class ListwiseReranker(WindowedReranker):
    name = "listwise"

    def __init__(
        self,
        backend: LLMBackend,
        template: PromptTemplate,
        *,
        labels: LabelStyle = "letters",
        constrained: bool = True,
        with_reason: bool = False,
        max_tokens: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(backend, template, **kw)
        if labels == "letters":
            make_labels(self.window, labels)  # a window over 26 needs numbers: fail early
        self.label_style: LabelStyle = labels
        self.constrained = constrained
        self.with_reason = with_reason
        self.max_tokens = max_tokens

    def _labels(self, n: int) -> list[str]:
        return make_labels(n, self.label_style)

    def _prompt_vars(self, request: RerankRequest, window: Sequence[Candidate]) -> dict[str, Any]:
        return {**super()._prompt_vars(request, window), "reason": self.with_reason}

    def tokens_for(self, n: int) -> int:
        """max_tokens for a window of ``n``: ~4 tokens per JSON entry with room to spare."""
        if self.max_tokens is not None:
            return self.max_tokens
        return 6 * n + 24 + (80 if self.with_reason else 0)

    def _generation(self, messages: list[ChatMessage], labels: list[str]) -> GenerationRequest:
        return GenerationRequest(
            messages=messages,
            max_tokens=self.tokens_for(len(labels)),
            temperature=0.0,
            json_schema=ranking_schema(labels, self.with_reason) if self.constrained else None,
            adapter=self.adapter,
        )

    def _read(
        self,
        request: RerankRequest,
        window: Sequence[Candidate],
        labels: list[str],
        result: GenerationResult,
    ) -> WindowAnswer:
        key = AnswerKey.build(
            window, labels, self.label_style, [(h.item_id, h.title) for h in request.history]
        )
        ids, reason = parse_ranking(result.text, key)
        analysed = analyse_answer(
            ids, [c.item_id for c in window], {h.item_id for h in request.history}
        )
        return WindowAnswer(
            order=analysed.ranking,
            analysis=analysed.analysis,
            usable=analysed.usable,
            reason=reason,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "labels": self.label_style,
            "constrained": self.constrained,
            "with_reason": self.with_reason,
        }
