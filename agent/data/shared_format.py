"""Reader for the shared JSONL format: ``items.jsonl`` + ``sequences.jsonl`` with given splits.

items.jsonl:     {"item_id", "domain", "title",
                  optional "categories", "description", "brand", "price"}
sequences.jsonl: {"user_id", "split": train|valid|test, "items": [item ids, oldest first]}
For valid/test rows the last item is the held-out target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.data.jsonl_io import iter_json_lines, require_str
from agent.data.schema import SPLITS, DataError, Dataset, Item, LoadReport, UserSequence

ITEMS_FILE = "items.jsonl"
SEQUENCES_FILE = "sequences.jsonl"


def _optional_text(obj: dict[str, Any], key: str, path: Path, lineno: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value if v)
    if not isinstance(value, str | int | float):
        raise DataError(
            f"expected text, got {type(value).__name__}", path=path, line=lineno, field_name=key
        )
    return str(value)


def _categories(obj: dict[str, Any], path: Path, lineno: int) -> tuple[str, ...]:
    value = obj.get("categories")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise DataError(
        "expected a string or a list of strings", path=path, line=lineno, field_name="categories"
    )


def read_items(
    path: Path, *, lenient: bool = False, report: LoadReport | None = None
) -> dict[str, Item]:
    report = report if report is not None else LoadReport()
    items: dict[str, Item] = {}
    first_line: dict[str, int] = {}
    for lineno, obj in iter_json_lines(path, lenient=lenient, report=report):
        try:
            item_id = require_str(obj, "item_id", path, lineno)
            domain = require_str(obj, "domain", path, lineno)
            title = require_str(obj, "title", path, lineno)
            if item_id in items:
                raise DataError(
                    f"duplicate item id {item_id!r} (first on line {first_line[item_id]})",
                    path=path,
                    line=lineno,
                    field_name="item_id",
                )
            item = Item(
                item_id=item_id,
                domain=domain,
                title=title.strip(),
                categories=_categories(obj, path, lineno),
                description=_optional_text(obj, "description", path, lineno),
                brand=_optional_text(obj, "brand", path, lineno),
                price=_optional_text(obj, "price", path, lineno),
            )
        except DataError as exc:
            if not lenient:
                raise
            report.skip(f"bad item ({exc.field_name or 'line'})", f"{path.name}:{lineno}")
            continue
        items[item_id] = item
        first_line[item_id] = lineno
    if not items:
        raise DataError("no items", path=path)
    return items


def read_sequences(
    path: Path,
    items: dict[str, Item],
    *,
    lenient: bool = False,
    report: LoadReport | None = None,
) -> list[UserSequence]:
    report = report if report is not None else LoadReport()
    users: list[UserSequence] = []
    seen: dict[tuple[str, str], int] = {}
    for lineno, obj in iter_json_lines(path, lenient=lenient, report=report):
        try:
            user_id = require_str(obj, "user_id", path, lineno)
            split = require_str(obj, "split", path, lineno)
            if split not in SPLITS:
                raise DataError(
                    f"unknown split {split!r} (expected one of {', '.join(SPLITS)})",
                    path=path,
                    line=lineno,
                    field_name="split",
                )
            seq = obj.get("items")
            if not isinstance(seq, list) or not all(isinstance(i, str) for i in seq):
                raise DataError(
                    "expected a list of item ids", path=path, line=lineno, field_name="items"
                )
            minimum = 1 if split == "train" else 2
            if len(seq) < minimum:
                raise DataError(
                    f"{split} rows need at least {minimum} items, got {len(seq)}",
                    path=path,
                    line=lineno,
                    field_name="items",
                )
            for pos, item_id in enumerate(seq):
                if item_id not in items:
                    raise DataError(
                        f"unknown item {item_id!r} at position {pos} (not in {ITEMS_FILE})",
                        path=path,
                        line=lineno,
                        field_name="items",
                    )
            key = (split, user_id)
            if key in seen:
                raise DataError(
                    f"duplicate user {user_id!r} in split {split} (first on line {seen[key]})",
                    path=path,
                    line=lineno,
                    field_name="user_id",
                )
        except DataError as exc:
            if not lenient:
                raise
            report.skip(f"bad sequence ({exc.field_name or 'line'})", f"{path.name}:{lineno}")
            continue
        seen[key] = lineno
        users.append(UserSequence(user_id=user_id, split=split, items=tuple(seq)))
    if not users:
        raise DataError("no user sequences", path=path)
    return users


def read_shared(directory: Path, *, lenient: bool = False) -> Dataset:
    if not directory.is_dir():
        raise DataError("data folder not found", path=directory)
    report = LoadReport()
    items = read_items(directory / ITEMS_FILE, lenient=lenient, report=report)
    users = read_sequences(directory / SEQUENCES_FILE, items, lenient=lenient, report=report)
    return Dataset(name=directory.name, items=items, users=users, report=report)
