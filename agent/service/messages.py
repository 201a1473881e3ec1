"""The chat message format: a recommendation request written in a conversation.

A user message is either a JSON object or plain ``key: value`` lines::

    {"user": "t1", "top_k": 5}
    {"history": ["B000BIZT3E", "Cast iron skillet"], "domain": "kitchen", "exclude": ["B00X"]}

    user: t1
    history: B000BIZT3E; Lodge cast iron skillet
    candidates: B002IYDXW8, B00004OCKR
    domain: kitchen
    top_k: 5
    exclude: B00004OCKR

Keys: ``user``, ``history``, ``candidates``, ``domain``, ``top_k`` (or ``k``), ``exclude``.
List values are separated by newlines or ``;`` (or ``,`` when every part is a catalogue-like id).
A message with no key is a history, one item per line. Later user messages of the same
conversation refine the earlier ones: a key given again replaces its value, except ``exclude``,
which accumulates (``exclude: X`` after a first answer removes X), so a follow-up turn can
exclude items or switch the domain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from agent.service.errors import BadRequest
from agent.service.queries import Query

KEYS = ("user", "history", "candidates", "domain", "top_k", "exclude")
ALIASES = {"k": "top_k", "topk": "top_k", "items": "history", "user_id": "user"}
LIST_KEYS = ("history", "candidates", "exclude")
_LINE = re.compile(r"^\s*([A-Za-z_]+)\s*[:=]\s*(.*)$")
_ID_LIKE = re.compile(r"^(?=.*\d)[A-Za-z0-9_\-.:]{4,40}$")  # no spaces, has a digit (ASINs)


def looks_like_id(ref: str) -> bool:
    """A catalogue-like id (``B000BIZT3E``), as opposed to a title."""
    return bool(_ID_LIKE.match(ref.strip()))


def split_list(raw: str) -> list[str]:
    """``a; b`` or lines -> parts; ``A1,B2`` -> parts when every part looks like an id."""
    parts = [p.strip() for p in re.split(r"[\n;]", raw) if p.strip()]
    if len(parts) == 1 and "," in parts[0]:
        pieces = [p.strip() for p in parts[0].split(",") if p.strip()]
        if all(looks_like_id(p) for p in pieces):
            return pieces
    return parts


def _as_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return split_list(value)
    if isinstance(value, list) and all(isinstance(v, str | int) for v in value):
        return [str(v).strip() for v in value if str(v).strip()]
    raise BadRequest(f"{where}: expected a list of item ids or titles", where)


def _top_k(value: Any, where: str) -> int:
    try:
        k = int(str(value).strip())
    except ValueError:
        raise BadRequest(f"{where}: expected a whole number, got {value!r}", where) from None
    if k < 1:
        raise BadRequest(f"{where}: must be at least 1, got {k}", where)
    return k


def parse_message(text: str, where: str = "messages") -> dict[str, Any]:
    """One user message -> the fields it sets (lists as lists, top_k as int)."""
    stripped = text.strip()
    if not stripped:
        raise BadRequest(f"{where}: empty message; see the message format", where)
    raw: dict[str, Any] = {}
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"{where}: not valid JSON ({exc.msg} at {exc.pos})", where) from None
        if not isinstance(data, dict):
            raise BadRequest(f"{where}: expected a JSON object", where)
        raw = {ALIASES.get(k.lower(), k.lower()): v for k, v in data.items()}
        unknown = sorted(set(raw) - set(KEYS))
        if unknown:
            raise BadRequest(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}", where
            )
    else:
        current: str | None = None
        loose: list[str] = []
        for line in stripped.splitlines():
            match = _LINE.match(line)
            key = ALIASES.get(match.group(1).lower(), match.group(1).lower()) if match else None
            if match and key in KEYS:
                current = key
                raw[key] = match.group(2).strip()
            elif current in LIST_KEYS and line.strip():
                raw[current] = f"{raw[current]}\n{line.strip()}"  # continuation lines
            elif line.strip():
                loose.append(line.strip())
        if loose:
            if raw:
                raise BadRequest(
                    f"{where}: cannot read {loose[0]!r}: expected 'key: value' lines with keys "
                    f"{', '.join(KEYS)}",
                    where,
                )
            raw["history"] = "\n".join(loose)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field_where = f"{where}.{key}"
        if value is None:
            continue
        if key in LIST_KEYS:
            out[key] = _as_list(value, field_where)
        elif key == "top_k":
            out[key] = _top_k(value, field_where)
        else:
            if not isinstance(value, str | int):
                raise BadRequest(f"{field_where}: expected a string", field_where)
            out[key] = str(value).strip() or None
    return out


def fold_conversation(user_messages: Sequence[str], where: str = "messages") -> Query:
    """The request a conversation's user turns add up to (later turns refine earlier ones)."""
    state: dict[str, Any] = {}
    exclude: list[str] = []
    origin: dict[str, str] = {}
    for pos, text in enumerate(user_messages):
        fields = parse_message(text, f"{where}[{pos}].content")
        for key, value in fields.items():
            origin[key] = f"{where}[{pos}].content"
            if key == "exclude":
                exclude.extend(v for v in value if v not in exclude)
            else:
                state[key] = value
    if not state.get("user") and not state.get("history"):
        raise BadRequest(
            f"{where}: no user and no history: say 'user: ID' or 'history: item; item' "
            "(or send a JSON object with those keys)",
            where,
        )
    candidates = state.get("candidates")
    return Query(
        user=state.get("user"),
        history=tuple(state.get("history") or ()),
        candidates=tuple(candidates) if candidates else None,
        domain=state.get("domain"),
        top_k=state.get("top_k"),
        exclude=tuple(exclude),
        fields=origin,
    )
