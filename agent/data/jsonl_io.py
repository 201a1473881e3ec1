"""Line-by-line JSONL reading that reports the file and line of every problem."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from agent.data.schema import DataError, LoadReport


def open_text(path: Path) -> TextIO:
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def iter_json_lines(
    path: Path, *, lenient: bool = False, report: LoadReport | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line.

    A line that is not a JSON object raises ``DataError``; with ``lenient`` it is skipped and
    counted in ``report`` instead.
    """
    with open_text(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                if lenient and report is not None:
                    report.skip("malformed JSON line", f"{path.name}:{lineno}")
                    continue
                raise DataError(f"malformed JSON ({exc.msg})", path=path, line=lineno) from None
            if not isinstance(obj, dict):
                if lenient and report is not None:
                    report.skip("line is not a JSON object", f"{path.name}:{lineno}")
                    continue
                raise DataError("expected a JSON object", path=path, line=lineno)
            yield lineno, obj


def require_str(
    obj: dict[str, Any], key: str, path: Path, lineno: int, *, allow_empty: bool = False
) -> str:
    if key not in obj:
        raise DataError("missing", path=path, line=lineno, field_name=key)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(
            f"expected a string, got {type(value).__name__}", path=path, line=lineno,
            field_name=key,
        )
    if not allow_empty and not value.strip():
        raise DataError("empty", path=path, line=lineno, field_name=key)
    return value
