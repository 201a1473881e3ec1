"""Typed values out of loosely typed records (CSV cells, JSON values, Parquet cells).

Every failure is a ``DataError`` naming the file, the line (or Parquet row) and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from agent.data.schema import DataError


@dataclass(frozen=True, slots=True)
class Pos:
    """Where a record came from, for error messages and skip examples."""

    path: Path
    line: int
    unit: str = "line"

    def error(self, message: str, field_name: str | None = None) -> DataError:
        return DataError(
            message, path=self.path, line=self.line, field_name=field_name, unit=self.unit
        )

    @property
    def ref(self) -> str:
        return f"{self.path.name}:{self.line}"


def get_id(record: dict[str, Any], key: str, pos: Pos) -> str:
    """An id: a non-empty string or an integer (JSON and Parquet ids are often numbers)."""
    value = record.get(key)
    if value is None:
        raise pos.error("missing", key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise pos.error(f"expected a string or integer id, got {type(value).__name__}", key)
    text = str(value).strip()
    if not text:
        raise pos.error("empty", key)
    return text


def get_text(record: dict[str, Any], key: str, pos: Pos, *, required: bool = False) -> str:
    """Free text; lists of strings (Amazon descriptions) are joined with spaces."""
    value = record.get(key)
    if value is None:
        if required:
            raise pos.error("missing", key)
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = " ".join(v.strip() for v in value if v.strip())
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value).strip()
    else:
        raise pos.error(f"expected text, got {type(value).__name__}", key)
    if required and not text:
        raise pos.error("empty", key)
    return text


def get_categories(
    record: dict[str, Any], key: str, pos: Pos, *, separator: str | None = None
) -> tuple[str, ...]:
    """A list of strings, or one string (split on ``separator`` where given, as in CSV)."""
    value = record.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(separator) if separator else [value]
        return tuple(p.strip() for p in parts if p.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise pos.error("expected a string or a list of strings", key)


def get_timestamp(record: dict[str, Any], key: str, pos: Pos) -> float:
    """Seconds (or any unit: only the order matters) from a number or an ISO 8601 date.

    Dates without a time zone are read as UTC.
    """
    value = record.get(key)
    if value is None:
        raise pos.error("missing", key)
    if isinstance(value, bool):
        raise pos.error("expected a number or an ISO 8601 date, got bool", key)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise pos.error(f"timestamp is {value}", key)
        return float(value)
    if isinstance(value, datetime):
        return _utc(value).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if not isinstance(value, str):
        raise pos.error(f"expected a number or an ISO 8601 date, got {type(value).__name__}", key)
    text = value.strip()
    if not text:
        raise pos.error("empty", key)
    try:
        number = float(text)
    except ValueError:
        try:
            return _utc(datetime.fromisoformat(text)).timestamp()
        except ValueError:
            raise pos.error(
                f"unparseable timestamp {text!r} (expected a number or an ISO 8601 date)", key
            ) from None
    if not math.isfinite(number):
        raise pos.error(f"timestamp is {text}", key)
    return number


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
