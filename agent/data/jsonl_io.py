"""Line-by-line JSONL reading that reports the file and line of every problem."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from agent.data.schema import DataError, LoadReport


def open_text(path: Path) -> TextIO:
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _open_binary(path: Path) -> BinaryIO:
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def iter_json_lines(
    path: Path, *, lenient: bool = False, report: LoadReport | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line.

    A line that is not a JSON object (or not UTF-8) raises ``DataError``; with ``lenient`` it
    is skipped and counted in ``report`` instead. Lines are decoded one by one (not through a
    text stream, which decodes ahead in chunks) so a bad byte is blamed on its own line.
    """
    with _open_binary(path) as handle:
        try:
            for lineno, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    if isinstance(exc, json.JSONDecodeError):
                        reason, detail = "malformed JSON line", f"malformed JSON ({exc.msg})"
                    else:
                        reason, detail = "line is not UTF-8 text", "not UTF-8 text"
                    if lenient and report is not None:
                        report.skip(reason, f"{path.name}:{lineno}")
                        continue
                    raise DataError(detail, path=path, line=lineno) from None
                if not isinstance(obj, dict):
                    if lenient and report is not None:
                        report.skip("line is not a JSON object", f"{path.name}:{lineno}")
                        continue
                    raise DataError("expected a JSON object", path=path, line=lineno)
                yield lineno, obj
        # A broken .gz fails the whole file: nothing after it can be read.
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"cannot read compressed file ({exc})", path=path) from None


def require_str(
    obj: dict[str, Any], key: str, path: Path, lineno: int, *, allow_empty: bool = False
) -> str:
    if key not in obj:
        raise DataError("missing", path=path, line=lineno, field_name=key)
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(
            f"expected a string, got {type(value).__name__}",
            path=path,
            line=lineno,
            field_name=key,
        )
    if not allow_empty and not value.strip():
        raise DataError("empty", path=path, line=lineno, field_name=key)
    return value
