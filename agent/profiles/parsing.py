"""Profiles from raw LLM text: find the JSON, repair what is repairable, validate, check evidence.

Small models wrap JSON in code fences or prose, add trailing garbage, or stop at ``max_tokens``
mid-string. ``extract_json`` takes the first JSON object out of such text and, when it is cut
off, closes the open string and brackets (dropping a dangling key or comma) so the part written
so far is kept. ``parse_profile`` then validates it as a ``Profile`` and removes evidence item
ids that are not in the user's history, counting them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.profiles.schema import Profile

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_STRING = r'"(?:[^"\\]|\\.)*"'
_DANGLING_KEY = re.compile(r"([{,])\s*" + _STRING + r"\s*$")
_KEY_ONLY = re.compile(r"([{,])\s*" + _STRING + r"$")


class ParseError(ValueError):
    """LLM text that holds no usable profile; the message says why (it goes into the retry)."""


@dataclass(frozen=True)
class ParsedProfile:
    profile: Profile
    repaired: bool  # anything beyond a plain json.loads of the whole text was needed
    dropped_evidence: int  # invented (or otherwise foreign) evidence ids removed


def _scan(text: str, start: int) -> tuple[int | None, list[str], bool]:
    """From the ``{`` at ``start``: (end index if it closes, open-bracket stack, inside string)."""
    stack: list[str] = []
    in_string = escaped = False
    for pos in range(start, len(text)):
        char = text[pos]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack and stack[-1] == char:
            stack.pop()
            if not stack:
                return pos + 1, [], False
    return None, stack, in_string


def _close_truncated(fragment: str, stack: list[str], in_string: bool) -> str:
    """Make a cut-off JSON prefix whole: end the string, drop a dangling key/comma, close."""
    text = fragment
    if in_string:
        text = (text[:-1] if text.endswith("\\") else text) + '"'
    in_object = bool(stack) and stack[-1] == "}"
    while True:
        text = text.rstrip()
        if text.endswith(","):
            text = text[:-1]
        elif text.endswith(":"):  # a key whose value never came: drop the key too
            text = _DANGLING_KEY.sub(r"\1", text[:-1])
        elif in_object and (match := _KEY_ONLY.search(text)):  # a key without its colon
            text = text[: match.start(1) + 1]
        else:
            return text + "".join(reversed(stack))


def extract_json(text: str) -> tuple[dict[str, Any], bool]:
    """The first JSON object in ``text`` and whether it needed repair; ParseError if none."""
    if not text or not text.strip():
        raise ParseError("empty answer")
    stripped = text.strip()
    try:
        whole = json.loads(stripped)
        if isinstance(whole, dict):
            return whole, False
    except json.JSONDecodeError:
        pass
    fenced = _FENCE.search(stripped)
    body = fenced.group(1) if fenced else stripped
    start = body.find("{")
    if start < 0:
        raise ParseError("no JSON object in the answer")
    end, stack, in_string = _scan(body, start)
    candidate = (
        body[start:end] if end is not None else _close_truncated(body[start:], stack, in_string)
    )
    for attempt in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            value = json.loads(attempt)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value, True
    raise ParseError("malformed JSON that could not be repaired")


def _field_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'object'}: {err['msg']}" for err in exc.errors()
    )[:300]


def _unique_phrases(values: list[str]) -> list[str]:
    """Non-empty phrases, stripped, first of each case-insensitive duplicate kept."""
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        phrase = value.strip()
        if phrase and phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            out.append(phrase)
    return out


def parse_profile(text: str, history_ids: Collection[str]) -> ParsedProfile:
    """A validated ``Profile`` from LLM text; evidence ids outside ``history_ids`` are dropped."""
    data, repaired = extract_json(text)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ParseError(f"wrong schema: {_field_errors(exc)}") from None
    known = set(history_ids)
    valid = [i for i in profile.evidence_item_ids if i in known]
    dropped = len(profile.evidence_item_ids) - len(valid)
    kept = list(dict.fromkeys(valid))  # duplicates are not invented, just repeated
    # Small models loop: the same phrase again and again fills a list. Keep each once.
    phrases = {
        name: _unique_phrases(getattr(profile, name))
        for name in ("preferences", "dislikes", "cross_domain_themes")
    }
    return ParsedProfile(
        profile=profile.model_copy(update={"evidence_item_ids": kept, **phrases}),
        repaired=repaired,
        dropped_evidence=dropped,
    )
