"""Reader for the shared JSONL format: ``items.jsonl`` + ``sequences.jsonl`` with given splits.

items.jsonl:     {"item_id", "domain", "title",
                  optional "categories", "description", "brand", "price"}
sequences.jsonl: {"user_id", "split": train|valid|test, "items": [item ids, oldest first]}
For valid/test rows the last item is the held-out target. A user has one train row; in valid
and test a user may have one row per target domain (a cross-domain dataset that holds out the
last item of each domain). Evaluation and candidates know a held-out row by its user id, so
the rows of such a user are named ``<user_id>#<target domain>`` (each evaluated on its own),
and the load report says how many users that concerns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
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
            item = Item.read(
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
    seen: dict[tuple[str, str, str], int] = {}
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
            # a held-out row is one per (user, target domain); a train row one per user
            key = (split, user_id, "" if split == "train" else items[seq[-1]].domain)
            if key in seen:
                per = f" with a target in domain {key[2]!r}" if key[2] else ""
                raise DataError(
                    f"duplicate user {user_id!r} in split {split}{per} (first on line {seen[key]})",
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
    return _name_rows_per_domain(users, items, path, report)


def _name_rows_per_domain(
    users: list[UserSequence], items: dict[str, Item], path: Path, report: LoadReport
) -> list[UserSequence]:
    """Rename the held-out rows of users with one row per target domain to
    ``<user_id>#<domain>``; every other row keeps its id."""
    rows: Counter[tuple[str, str]] = Counter((u.split, u.user_id) for u in users)
    repeated = {key for key, n in rows.items() if n > 1}
    if not repeated:
        return users
    taken = set(rows)
    out: list[UserSequence] = []
    for user in users:
        if (user.split, user.user_id) not in repeated:
            out.append(user)
            continue
        target = user.items[-1]
        name = f"{user.user_id}#{items[target].domain}"
        if (user.split, name) in taken:
            raise DataError(
                f"user {user.user_id!r} has one {user.split} row per target domain, but the "
                f"row name {name!r} that would tell them apart is another user's id",
                path=path,
                field_name="user_id",
            )
        out.append(replace(user, user_id=name))
    for split in ("valid", "test"):
        n = sum(1 for s, _ in repeated if s == split)
        if n:
            report.note(
                f"{n} {split} users have one row per target domain: their rows are named "
                "<user_id>#<domain> and evaluated separately"
            )
    return out


def read_shared(directory: Path, *, lenient: bool = False) -> Dataset:
    if not directory.is_dir():
        raise DataError("data folder not found", path=directory)
    report = LoadReport()
    items = read_items(directory / ITEMS_FILE, lenient=lenient, report=report)
    users = read_sequences(directory / SEQUENCES_FILE, items, lenient=lenient, report=report)
    return Dataset(name=directory.name, items=items, users=users, report=report)
