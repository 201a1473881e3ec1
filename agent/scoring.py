"""Batch scoring of candidate lists with any recommender (``recbridge score``).

Input: JSON lines (UTF-8), one request a line; extra fields are ignored, blank lines skipped::

    {"user_id": "u1", "history": ["B000A", "B000B"], "candidates": ["B000C", "B000D"]}

- ``user_id``: a string (or an integer), echoed back unchanged.
- ``history``: item ids, oldest first; may be empty. Ids not in the item catalogue are ignored.
- ``candidates``: item ids to score; may be empty.

Output: one JSON line per non-blank input line, in input order::

    {"user_id": "u1", "scores": [0.71, -2.5]}

- ``scores``: one float per candidate, in the candidates' order; higher = better.
- ``unknown_candidates``: present when some candidates are not in the catalogue; each gets the
  lowest score ``UNKNOWN_ITEM_SCORE`` (-1e30), so it ranks last.
- ``unknown_history``: present when some history ids are not in the catalogue (ignored).
- A non-finite model score (NaN, -inf) is written as -1e30 and +inf as 1e30 (strict JSON).

A line that cannot be scored (not JSON, not an object, a field missing or of the wrong type,
the model failing on it) gives instead::

    {"user_id": "u1", "line": 7, "error": "history: expected a list of strings"}

(``user_id`` only when it could be read; ``line`` counts from 1). Bad lines never stop the run;
the summary at the end counts lines, errors and unknown ids. Only an input file that is missing
or unreadable (or an output that cannot be written) is fatal.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender

log = logging.getLogger(__name__)

MAX_SCORE = 1.0e30
# Flush a batch at this many candidates too, so a few huge lists do not pile up in memory.
MAX_BATCH_CANDIDATES = 1_000_000


@dataclass
class Request:
    line: int
    user_id: str | int
    history: list[str]  # known ids only
    candidates: list[str]
    known: np.ndarray  # bool mask over candidates
    unknown_candidates: list[str]
    unknown_history: list[str]


@dataclass
class ScoreSummary:
    lines: int = 0
    ok: int = 0
    errors: int = 0
    unknown_candidates: int = 0
    unknown_history: int = 0
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)

    def error(self, line: int, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 5:
            self.error_examples.append(f"line {line}: {message}")


class LineError(ValueError):
    def __init__(self, message: str, user_id: str | int | None = None) -> None:
        super().__init__(message)
        self.user_id = user_id


def _str_list(obj: dict[str, Any], key: str) -> list[str]:
    if key not in obj:
        raise LineError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LineError(f"{key}: expected a list of strings (item ids)")
    return value


def parse_request(raw: bytes, line: int, catalog: dict[str, Any]) -> Request:
    """One input line -> Request; raises LineError saying what is wrong."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LineError("not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise LineError(f"malformed JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    user_id = obj.get("user_id")
    # bool is an int subclass; an id of true/false is a mistake, not an id
    if user_id is None or isinstance(user_id, bool) or not isinstance(user_id, str | int):
        raise LineError("user_id: missing" if user_id is None else "user_id: expected a string")
    try:
        history = _str_list(obj, "history")
        candidates = _str_list(obj, "candidates")
    except LineError as exc:
        raise LineError(str(exc), user_id) from None
    known = np.fromiter((c in catalog for c in candidates), dtype=bool, count=len(candidates))
    return Request(
        line=line,
        user_id=user_id,
        history=[h for h in history if h in catalog],
        candidates=candidates,
        known=known,
        unknown_candidates=[c for c, k in zip(candidates, known, strict=True) if not k],
        unknown_history=[h for h in history if h not in catalog],
    )


def _scores_of(req: Request, model_scores: np.ndarray) -> list[float]:
    out = np.full(len(req.candidates), UNKNOWN_ITEM_SCORE, dtype=np.float64)
    out[req.known] = np.nan_to_num(
        np.asarray(model_scores, dtype=np.float64),
        nan=UNKNOWN_ITEM_SCORE,
        posinf=MAX_SCORE,
        neginf=UNKNOWN_ITEM_SCORE,
    )
    result: list[float] = out.tolist()
    return result


def _ok_record(req: Request, scores: list[float]) -> dict[str, Any]:
    rec: dict[str, Any] = {"user_id": req.user_id, "scores": scores}
    if req.unknown_candidates:
        rec["unknown_candidates"] = req.unknown_candidates
    if req.unknown_history:
        rec["unknown_history"] = req.unknown_history
    return rec


def _error_record(line: int, message: str, user_id: str | int | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"user_id": user_id} if user_id is not None else {}
    return rec | {"line": line, "error": message}


def _call_model(model: Recommender, reqs: list[Request]) -> list[np.ndarray]:
    cands = [[c for c, k in zip(r.candidates, r.known, strict=True) if k] for r in reqs]
    scores = model.score([r.history for r in reqs], cands)
    if len(scores) != len(reqs):
        raise ValueError(f"model returned {len(scores)} score arrays for {len(reqs)} users")
    for r, c, s in zip(reqs, cands, scores, strict=True):
        if len(s) != len(c):
            raise ValueError(
                f"model returned {len(s)} scores for {len(c)} candidates (line {r.line})"
            )
    return scores


def score_batch(model: Recommender, reqs: list[Request]) -> list[dict[str, Any]]:
    """Records for a batch; if the model fails on it, each line is retried alone to isolate it."""
    try:
        scores = _call_model(model, reqs)
    except Exception as exc:  # a model bug on one line must not lose the others
        if len(reqs) == 1:
            r = reqs[0]
            return [_error_record(r.line, f"model failed: {exc}", r.user_id)]
        log.warning("scoring a batch failed (%s); retrying its %d lines one by one", exc, len(reqs))
        return [rec for r in reqs for rec in score_batch(model, [r])]
    return [_ok_record(r, _scores_of(r, s)) for r, s in zip(reqs, scores, strict=True)]


# One line of a group: (line number, raw bytes, the parsed request or its error record).
GroupLine = tuple[int, bytes, "Request | dict[str, Any]"]


def line_groups(
    lines: Iterator[tuple[int, bytes]],
    catalog: dict[str, Any],
    summary: ScoreSummary,
    batch_size: int = 256,
) -> Iterator[list[GroupLine]]:
    """The input's non-blank lines, parsed, in the groups that are scored together: at most
    ``batch_size`` requests (fewer when their candidates add up to MAX_BATCH_CANDIDATES).

    Both engines score the same groups, so a model sees the same batches either way.
    """
    pending: list[GroupLine] = []
    n_reqs = n_cands = 0
    for lineno, raw in lines:
        if not raw.strip():
            continue
        summary.lines += 1
        try:
            req = parse_request(raw, lineno, catalog)
        except LineError as exc:
            pending.append((lineno, raw, _error_record(lineno, str(exc), exc.user_id)))
        else:
            pending.append((lineno, raw, req))
            n_reqs += 1
            n_cands += len(req.candidates)
        if (
            n_reqs >= batch_size
            or n_cands >= MAX_BATCH_CANDIDATES
            or len(pending) >= 4 * batch_size
        ):
            yield pending
            pending = []
            n_reqs = n_cands = 0
    if pending:
        yield pending


def score_group(model: Recommender, group: list[GroupLine]) -> list[dict[str, Any]]:
    """Output records of one group, in its order."""
    reqs = [p for _, _, p in group if isinstance(p, Request)]
    done = iter(score_batch(model, reqs) if reqs else [])
    return [next(done) if isinstance(p, Request) else p for _, _, p in group]


def score_stream(
    model: Recommender,
    lines: Iterator[tuple[int, bytes]],
    summary: ScoreSummary,
    batch_size: int = 256,
) -> Iterator[dict[str, Any]]:
    """Output records in input order; requests are scored ``batch_size`` at a time."""
    for group in line_groups(lines, model.data.items, summary, batch_size):
        yield from score_group(model, group)


def numbered_lines(src: Any, bar: tqdm[Any] | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw line) of a binary file, advancing ``bar`` by bytes."""
    for lineno, raw in enumerate(src, start=1):
        if bar is not None:
            bar.update(len(raw))
        yield lineno, raw


def write_records(records: Iterator[dict[str, Any]], dst: Any, summary: ScoreSummary) -> None:
    """Write output records as JSON lines and count them into ``summary``."""
    for rec in records:
        if "error" in rec:
            summary.error(rec["line"], rec["error"])
        else:
            summary.ok += 1
            summary.unknown_candidates += len(rec.get("unknown_candidates", ()))
            summary.unknown_history += len(rec.get("unknown_history", ()))
        dst.write(json.dumps(rec) + "\n")


def score_file(
    model: Recommender,
    input_path: Path,
    output_path: Path,
    batch_size: int = 256,
    progress: bool = True,
) -> ScoreSummary:
    """Score every line of ``input_path`` into ``output_path`` (see the module doc for formats).

    Raises ``FileNotFoundError`` / ``OSError`` only for the files themselves.
    """
    if not input_path.is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    summary = ScoreSummary()
    started = time.perf_counter()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        input_path.open("rb") as src,
        output_path.open("w", encoding="utf-8") as dst,
        tqdm(
            total=input_path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"score {model.name}",
            disable=None if progress else True,  # None: only on a terminal
        ) as bar,
    ):
        records = score_stream(model, numbered_lines(src, bar), summary, batch_size)
        write_records(records, dst, summary)
    summary.seconds = time.perf_counter() - started
    log_summary(summary, output_path)
    return summary


def log_summary(summary: ScoreSummary, output_path: Path) -> None:
    log.info(
        "scored %d lines into %s in %.1fs: %d ok, %d errors; unknown ids: %d candidates "
        "(scored %.0e), %d history (ignored)",
        summary.lines,
        output_path,
        summary.seconds,
        summary.ok,
        summary.errors,
        summary.unknown_candidates,
        UNKNOWN_ITEM_SCORE,
        summary.unknown_history,
    )
    for example in summary.error_examples:
        log.warning("error %s", example)
