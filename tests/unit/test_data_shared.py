"""Shared JSONL format: every bad input names its file, line and field; lenient mode counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.data.schema import DataError
from agent.data.shared_format import read_shared

ITEMS = [
    {"item_id": "f1", "domain": "food", "title": "Apple"},
    {"item_id": "f2", "domain": "food", "title": "Bread", "categories": ["Bakery"]},
    {"item_id": "k1", "domain": "kitchen", "title": "Pan", "brand": "Acme", "price": 9.5},
]
SEQUENCES = [
    {"user_id": "a", "split": "train", "items": ["f1", "k1"]},
    {"user_id": "b", "split": "valid", "items": ["f1", "f2"]},
    {"user_id": "c", "split": "test", "items": ["k1", "f1", "f2"]},
]


def _write(folder: Path, items: list[Any], sequences: list[Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("items.jsonl", items), ("sequences.jsonl", sequences)):
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_good_folder_reads(tmp_path: Path) -> None:
    data = read_shared(_write(tmp_path, ITEMS, SEQUENCES))
    assert list(data.items) == ["f1", "f2", "k1"]
    assert data.items["f2"].categories == ("Bakery",)
    assert data.items["k1"].price == "9.5"
    assert [u.split for u in data.users] == ["train", "valid", "test"]
    assert data.users[1].target == "f2"
    assert data.report.total_skipped == 0


def test_missing_file(tmp_path: Path) -> None:
    folder = _write(tmp_path, ITEMS, SEQUENCES)
    (folder / "sequences.jsonl").unlink()
    with pytest.raises(DataError, match=r"sequences\.jsonl: file not found"):
        read_shared(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        read_shared(tmp_path / "nowhere")


# (file, line index to replace, bad line, expected line number, field or None, message part)
BAD_SEQUENCES: list[tuple[str, Any, int, str | None, str]] = [
    ("malformed", '{"user_id": "a", "split": ', 2, None, "malformed JSON"),
    ("not-object", "[1, 2]", 2, None, "expected a JSON object"),
    (
        "unknown-item",
        {"user_id": "x", "split": "train", "items": ["f1", "zz"]},
        2,
        "items",
        "unknown item 'zz' at position 1",
    ),
    (
        "bad-split",
        {"user_id": "x", "split": "holdout", "items": ["f1"]},
        2,
        "split",
        "unknown split 'holdout'",
    ),
    (
        "short-valid",
        {"user_id": "x", "split": "valid", "items": ["f1"]},
        2,
        "items",
        "valid rows need at least 2 items, got 1",
    ),
    (
        "duplicate-user",
        {"user_id": "a", "split": "train", "items": ["f2"]},
        2,
        "user_id",
        "duplicate user 'a' in split train (first on line 1)",
    ),
    (
        "items-not-list",
        {"user_id": "x", "split": "train", "items": "f1"},
        2,
        "items",
        "expected a list of item ids",
    ),
    (
        "items-wrong-type",
        {"user_id": "x", "split": "train", "items": ["f1", 7]},
        2,
        "items",
        "expected a list of item ids",
    ),
    (
        "user-wrong-type",
        {"user_id": 12, "split": "train", "items": ["f1"]},
        2,
        "user_id",
        "expected a string, got int",
    ),
    ("user-missing", {"split": "train", "items": ["f1"]}, 2, "user_id", "missing"),
]


@pytest.mark.parametrize(
    ("bad", "line", "field", "message"),
    [case[1:] for case in BAD_SEQUENCES],
    ids=[case[0] for case in BAD_SEQUENCES],
)
def test_bad_sequence_line(
    tmp_path: Path, bad: Any, line: int, field: str | None, message: str
) -> None:
    sequences = [SEQUENCES[0], bad, *SEQUENCES[1:]]
    folder = _write(tmp_path, ITEMS, sequences)
    with pytest.raises(DataError) as info:
        read_shared(folder)
    text = str(info.value)
    assert "sequences.jsonl" in text
    assert f"line {line}" in text
    assert message in text
    assert info.value.line == line
    assert info.value.field_name == field
    if field is not None:
        assert f"field '{field}'" in text


BAD_ITEMS: list[tuple[str, Any, str | None, str]] = [
    ("empty-title", {"item_id": "x", "domain": "food", "title": "  "}, "title", "empty"),
    ("missing-title", {"item_id": "x", "domain": "food"}, "title", "missing"),
    (
        "duplicate-id",
        {"item_id": "f1", "domain": "food", "title": "Again"},
        "item_id",
        "duplicate item id 'f1' (first on line 1)",
    ),
    (
        "title-wrong-type",
        {"item_id": "x", "domain": "food", "title": 3},
        "title",
        "expected a string, got int",
    ),
    (
        "categories-wrong-type",
        {"item_id": "x", "domain": "food", "title": "X", "categories": [1]},
        "categories",
        "expected a string or a list of strings",
    ),
    (
        "brand-wrong-type",
        {"item_id": "x", "domain": "food", "title": "X", "brand": {"a": 1}},
        "brand",
        "expected text, got dict",
    ),
    ("malformed", '{"item_id": "x",,}', None, "malformed JSON"),
]


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [case[1:] for case in BAD_ITEMS],
    ids=[case[0] for case in BAD_ITEMS],
)
def test_bad_item_line(tmp_path: Path, bad: Any, field: str | None, message: str) -> None:
    folder = _write(tmp_path, [ITEMS[0], bad, *ITEMS[1:]], SEQUENCES)
    with pytest.raises(DataError) as info:
        read_shared(folder)
    text = str(info.value)
    assert "items.jsonl" in text
    assert "line 2" in text
    assert message in text
    assert info.value.field_name == field


def test_lenient_counts_every_skip(tmp_path: Path) -> None:
    items = [
        *ITEMS,
        {"item_id": "x", "domain": "food", "title": ""},
        {"item_id": "f1", "domain": "food", "title": "Again"},
        "not json",
    ]
    sequences = [
        *SEQUENCES,
        {"user_id": "d", "split": "train", "items": ["x"]},  # x was skipped: unknown
        {"user_id": "a", "split": "train", "items": ["f2"]},
        {"user_id": "e", "split": "nope", "items": ["f1"]},
        "{broken",
    ]
    data = read_shared(_write(tmp_path, items, sequences), lenient=True)
    assert [u.user_id for u in data.users] == ["a", "b", "c"]
    assert set(data.items) == {"f1", "f2", "k1"}
    assert data.report.skipped == {
        "bad item (title)": 1,
        "bad item (item_id)": 1,
        "malformed JSON line": 2,
        "bad sequence (items)": 1,
        "bad sequence (user_id)": 1,
        "bad sequence (split)": 1,
    }
    assert data.report.total_skipped == 7
    assert data.report.examples["bad item (title)"] == ["items.jsonl:4"]
    assert any("malformed JSON line" in line for line in data.report.lines())


def test_all_lines_bad_is_an_error_even_lenient(tmp_path: Path) -> None:
    folder = _write(tmp_path, ITEMS, [{"user_id": "x", "split": "train", "items": ["zz"]}])
    with pytest.raises(DataError, match="no user sequences"):
        read_shared(folder, lenient=True)


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    folder = _write(tmp_path, ITEMS, SEQUENCES)
    with (folder / "items.jsonl").open("ab") as fh:
        fh.write(b'{"item_id": "x", "domain": "food", "title": "Caf\xe9"}\n')
    with pytest.raises(DataError, match=r"items\.jsonl, line 4: not UTF-8 text"):
        read_shared(folder)
    data = read_shared(folder, lenient=True)
    assert data.report.skipped == {"line is not UTF-8 text": 1}
