"""Every error of the API in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with one field-path style for ``param``: dotted keys and bracketed indices
(``messages[0].content``, ``history[2]``, ``query.user``), as the service's own errors name
their fields. Pure functions: the app's exception handlers and the Guard use them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# OpenAI's error ``type`` per HTTP status (its clients raise a typed error per status).
KINDS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}
_SOURCES = ("body", "query", "path", "header", "cookie")  # FastAPI's first loc element
# What pydantic puts in a loc for a union member ("str", "list[TextPart]", "RerankQuery",
# "function-after[_encodable(), str]"): never a field of ours (snake_case keys).
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "none", "bytes", "dict", "list", "any"})
_MAX_LISTED = 5  # errors spelled out in one message
_ELSEWHERE = object()  # the body is not known at this point of the path


def kind_of(status: int) -> str:
    return KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_payload(status: int, message: str, param: str | None, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind_of(status), "param": param, "code": code}}


def error_bytes(status: int, message: str, param: str | None, code: str) -> bytes:
    return json.dumps(error_payload(status, message, param, code)).encode()


def looks_like_tag(part: str) -> bool:
    """A pydantic union-member tag, not a field name."""
    return part in _TYPE_NAMES or "[" in part or "(" in part or part[:1].isupper()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def field_path(loc: Sequence[str | int], body: Any = _ELSEWHERE, kind: str = "") -> str:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content``.

    A body error walks ``body`` (the parsed JSON) along the loc: a step that is neither a key
    nor an index of the value reached is a union member's tag and is dropped; a key that is
    not there is kept only when it is the missing field itself (``kind`` "missing"). Without
    a body (query and path parameters) steps that only a type tag looks like are dropped.
    """
    parts = list(loc)
    source = parts.pop(0) if parts and parts[0] in _SOURCES else None
    node: Any = body if source == "body" else _ELSEWHERE
    path = ""
    for pos, part in enumerate(parts):
        last = pos == len(parts) - 1
        if isinstance(part, int):
            path += f"[{part}]"
            fits = isinstance(node, list) and 0 <= part < len(node)
            node = node[part] if fits else _ELSEWHERE
        elif node is _ELSEWHERE:
            if not looks_like_tag(part):
                path = _join(path, part)
        elif isinstance(node, dict) and part in node:
            # {"query": {"str": 1}}: "str" is both a key and the tag of a type error on query
            if last and kind.endswith("_type") and looks_like_tag(part):
                continue
            path, node = _join(path, part), node[part]
        elif isinstance(node, dict) and last and kind.startswith("missing"):
            path, node = _join(path, part), _ELSEWHERE
        # else: a union member's tag (the value here is not a dict holding it): dropped
    return path


def _message(error: Mapping[str, Any]) -> str:
    msg = str(error.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")  # our validators' own words, without pydantic's


def _within(path: str, parent: str) -> bool:
    return path.startswith((f"{parent}.", f"{parent}["))


def describe_errors(errors: Sequence[Mapping[str, Any]], body: Any = _ELSEWHERE) -> tuple[str, str]:
    """(message, param) for a list of pydantic errors: one ``path: message`` per field (the
    messages of one path de-duplicated, a union's alternatives joined by "or"), and as
    ``param`` the first error's field, or the first field inside it that a union member
    named (``query`` -> ``query.colour``)."""
    by_path: dict[str, list[str]] = {}
    for error in errors:
        loc = error.get("loc", ())
        path = field_path(loc, body, str(error.get("type", ""))) or str(loc[0] if loc else "body")
        msgs = by_path.setdefault(path, [])
        if _message(error) not in msgs:
            msgs.append(_message(error))
    if not by_path:
        return "body: invalid request", "body"
    paths = list(by_path)
    param = next((p for p in paths if _within(p, paths[0])), paths[0])
    parts = [f"{p}: {' or '.join(by_path[p])}" for p in paths[:_MAX_LISTED]]
    if len(paths) > _MAX_LISTED:
        parts.append(f"and {len(paths) - _MAX_LISTED} more field(s)")
    return "; ".join(parts), param


def json_error_message(doc: str | bytes, pos: int, reason: str) -> str:
    """``body: invalid JSON at line 1, column 37: Expecting ',' delimiter``."""
    text = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else doc
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f"body: invalid JSON at line {line}, column {column}: {reason}"


def body_error_message(cause: BaseException | None) -> str:
    """Why a body could not be read as JSON (FastAPI hides the cause behind a plain 400)."""
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply to read"
    if isinstance(cause, UnicodeDecodeError):
        return f"body: not valid UTF-8 at byte {cause.start}: {cause.reason}"
    if cause is not None:
        return f"body: could not be read as JSON ({type(cause).__name__}: {cause})"
    return "body: could not be read"
