"""Generic tables (CSV, TSV, JSONL, Parquet): chronological leave-one-out, k-core, errors."""

from __future__ import annotations

import csv
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.config import DataSettings, TableColumns
from agent.data.loader import detect_format, load_dataset
from agent.data.schema import DataError, Dataset
from agent.data.tables import read_tables

ITEM_ROWS: list[dict[str, Any]] = [
    {
        "item_id": "f1",
        "domain": "food",
        "title": "Apple",
        "categories": "Fruit|Fresh",
        "description": "Crisp",
        "brand": "Orchard",
        "price": "1.5",
    },
    {"item_id": "f2", "domain": "food", "title": "Bread"},
    {"item_id": "f3", "domain": "food", "title": "Cheese"},
    {"item_id": "k1", "domain": "kitchen", "title": "Pan"},
    {"item_id": "k2", "domain": "kitchen", "title": "Knife"},
    {"item_id": "k3", "domain": "kitchen", "title": "Spoon"},
    {"item_id": "k9", "domain": "kitchen", "title": "Never used"},
]
# Out of time order on purpose; u2's f1 and f3 tie at 5 (file order wins).
EVENT_ROWS: list[dict[str, Any]] = [
    {"user_id": "u1", "item_id": "f1", "timestamp": 30, "domain": "food"},
    {"user_id": "u1", "item_id": "k1", "timestamp": 10, "domain": "kitchen"},
    {"user_id": "u1", "item_id": "f2", "timestamp": 20, "domain": "food"},
    {"user_id": "u1", "item_id": "k2", "timestamp": 40, "domain": "kitchen"},
    {"user_id": "u2", "item_id": "f1", "timestamp": 5, "domain": "food"},
    {"user_id": "u2", "item_id": "f3", "timestamp": 5, "domain": "food"},
    {"user_id": "u2", "item_id": "k1", "timestamp": 1, "domain": "kitchen"},
    {"user_id": "u3", "item_id": "k3", "timestamp": 100, "domain": "kitchen"},
    {"user_id": "u3", "item_id": "f2", "timestamp": 50, "domain": "food"},
]
ITEM_FIELDS = ["item_id", "domain", "title", "categories", "description", "brand", "price"]
EVENT_FIELDS = ["user_id", "item_id", "timestamp", "domain"]


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str], sep: str = ",") -> Path:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, delimiter=sep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def _jsonl_items() -> list[dict[str, Any]]:
    rows = [dict(r) for r in ITEM_ROWS]
    rows[0]["categories"] = ["Fruit", "Fresh"]
    return rows


def write_tables(folder: Path, kind: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("csv", "csv.gz", "tsv"):
        sep = "\t" if kind == "tsv" else ","
        write_csv(folder / f"items.{kind}", ITEM_ROWS, ITEM_FIELDS, sep)
        write_csv(folder / f"interactions.{kind}", EVENT_ROWS, EVENT_FIELDS, sep)
    elif kind in ("jsonl", "jsonl.gz"):
        write_jsonl(folder / f"items.{kind}", _jsonl_items())
        write_jsonl(folder / f"interactions.{kind}", EVENT_ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(_jsonl_items()), folder / "items.parquet")
        events = [
            {**r, "timestamp": datetime.fromtimestamp(r["timestamp"], tz=UTC)} for r in EVENT_ROWS
        ]  # a real Parquet timestamp column
        pq.write_table(pa.Table.from_pylist(events), folder / "interactions.parquet")
    return folder


def rows_of(data: Dataset) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(u.split, u.user_id): u.items for u in data.users}


EXPECTED = {
    ("train", "u1"): ("k1", "f2"),
    ("valid", "u1"): ("k1", "f2", "f1"),
    ("test", "u1"): ("k1", "f2", "f1", "k2"),
    ("train", "u2"): ("k1",),
    ("valid", "u2"): ("k1", "f1"),
    ("test", "u2"): ("k1", "f1", "f3"),
    ("train", "u3"): ("f2", "k3"),  # 2 interactions: train row only
}


@pytest.mark.parametrize("kind", ["csv", "csv.gz", "tsv", "jsonl", "jsonl.gz", "parquet"])
def test_leave_one_out_in_every_format(tmp_path: Path, kind: str) -> None:
    folder = write_tables(tmp_path / kind, kind)
    assert detect_format(folder) == "table"
    data = load_dataset(DataSettings(path=folder))
    assert rows_of(data) == EXPECTED
    assert data.name == kind
    assert "k9" not in data.items  # nobody used it
    apple = data.items["f1"]
    assert (apple.domain, apple.title, apple.categories) == ("food", "Apple", ("Fruit", "Fresh"))
    assert (apple.description, apple.brand, apple.price) == ("Crisp", "Orchard", "1.5")
    assert data.items["k1"].domain == "kitchen"
    assert data.report.total_skipped == 0
    assert data.report.notes == [
        "1 users with fewer than 3 interactions: train row only",
        "1 items without kept interactions left out",
    ]


def test_k_core_from_settings(tmp_path: Path) -> None:
    folder = write_tables(tmp_path, "csv")
    data = load_dataset(DataSettings(path=folder, k_core=2))
    # Hand-checked in test_data_split: u1 and u2 keep [k1, f1], too short to split.
    assert rows_of(data) == {("train", "u1"): ("k1", "f1"), ("train", "u2"): ("k1", "f1")}
    assert set(data.items) == {"k1", "f1"}
    assert data.report.notes[0] == ("2-core: removed 1 users, 4 items, 5 interactions (3 rounds)")


def test_k_core_keeps_splittable_users(tmp_path: Path) -> None:
    events = [
        {"user_id": u, "item_id": i, "timestamp": t}
        for u in ("a", "b")
        for t, i in enumerate(["f1", "f2", "k1"])
    ] + [{"user_id": "c", "item_id": "k3", "timestamp": 0}]
    write_csv(tmp_path / "items.csv", ITEM_ROWS, ITEM_FIELDS)
    write_csv(tmp_path / "interactions.csv", events, ["user_id", "item_id", "timestamp"])
    data = load_dataset(DataSettings(path=tmp_path, k_core=2))
    assert rows_of(data) == {
        ("train", "a"): ("f1",),
        ("valid", "a"): ("f1", "f2"),
        ("test", "a"): ("f1", "f2", "k1"),
        ("train", "b"): ("f1",),
        ("valid", "b"): ("f1", "f2"),
        ("test", "b"): ("f1", "f2", "k1"),
    }


def test_custom_columns_and_iso_dates(tmp_path: Path) -> None:
    items = [{"asin": r["item_id"], "cat": r["domain"], "name": r["title"]} for r in ITEM_ROWS]
    events = [
        {
            "who": r["user_id"],
            "asin": r["item_id"],
            "when": datetime.fromtimestamp(r["timestamp"], tz=UTC).isoformat(),
        }
        for r in EVENT_ROWS
    ]
    write_jsonl(tmp_path / "catalog.jsonl", items)
    write_jsonl(tmp_path / "log.jsonl", events)
    columns = TableColumns(user="who", item="asin", timestamp="when", domain="cat", title="name")
    data = read_tables(tmp_path / "log.jsonl", tmp_path / "catalog.jsonl", columns=columns)
    assert rows_of(data) == EXPECTED


def test_interactions_file_as_data_path(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    (tmp_path / "interactions.csv").rename(tmp_path / "events.csv")
    settings = DataSettings(path=tmp_path / "events.csv")
    assert detect_format(settings.path, settings) == "table"
    assert rows_of(load_dataset(settings)) == EXPECTED


def test_named_tables_in_settings(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    (tmp_path / "items.csv").rename(tmp_path / "products.csv")
    (tmp_path / "interactions.csv").rename(tmp_path / "events.csv")
    settings = DataSettings(
        path=tmp_path, interactions=Path("events.csv"), items_table=Path("products.csv")
    )
    assert detect_format(tmp_path, settings) == "table"
    assert rows_of(load_dataset(settings)) == EXPECTED


def test_two_item_tables_is_ambiguous(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    write_jsonl(tmp_path / "items.jsonl", _jsonl_items())
    with pytest.raises(DataError, match=r"several items tables \(items\.csv, items\.jsonl\)"):
        load_dataset(DataSettings(path=tmp_path, format="table"))


# --- bad input: file, line (CSV header = line 1) and field in every message -----------------


def _bad_events(tmp_path: Path, row: int, **changes: Any) -> Path:
    """The CSV tables with data row ``row`` (0-based) of the interactions changed."""
    write_tables(tmp_path, "csv")
    events = [dict(r) for r in EVENT_ROWS]
    events[row].update(changes)
    write_csv(tmp_path / "interactions.csv", events, EVENT_FIELDS)
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"item_id": "nope"}, "item_id", "unknown item 'nope' (not in items.csv)"),
        ({"timestamp": "yesterday"}, "timestamp", "unparseable timestamp 'yesterday'"),
        ({"timestamp": ""}, "timestamp", "empty"),
        ({"timestamp": "nan"}, "timestamp", "timestamp is nan"),
        ({"user_id": " "}, "user_id", "empty"),
        ({"domain": "kitchen"}, "domain", "domain 'kitchen' differs from the item table's 'food'"),
    ],
)
def test_bad_interaction_row(
    tmp_path: Path, changes: dict[str, Any], field: str, message: str
) -> None:
    folder = _bad_events(tmp_path, 2, **changes)  # data row 3 = line 4
    with pytest.raises(DataError) as info:
        load_dataset(DataSettings(path=folder))
    text = str(info.value)
    assert text.startswith(str(folder / "interactions.csv"))
    assert "line 4" in text
    assert f"field '{field}'" in text
    assert message in text


def test_missing_column(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    write_csv(tmp_path / "interactions.csv", EVENT_ROWS, ["user_id", "item_id", "domain"])
    with pytest.raises(DataError) as info:
        load_dataset(DataSettings(path=tmp_path))
    assert "interactions.csv, line 1, field 'timestamp': missing column" in str(info.value)


def test_missing_column_is_fatal_even_lenient(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    write_csv(tmp_path / "items.csv", ITEM_ROWS, ["item_id", "domain"])
    with pytest.raises(DataError, match=r"items\.csv, line 1, field 'title': missing column"):
        load_dataset(DataSettings(path=tmp_path, lenient=True))


def test_short_csv_row_reads_as_missing(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    with (tmp_path / "interactions.csv").open("a", encoding="utf-8") as fh:
        fh.write("u9,f1\n")
    with pytest.raises(DataError, match=r"line 11, field 'timestamp': missing"):
        load_dataset(DataSettings(path=tmp_path))


def test_duplicate_item_id(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    items = [*ITEM_ROWS, {"item_id": "f2", "domain": "food", "title": "Other bread"}]
    write_csv(tmp_path / "items.csv", items, ITEM_FIELDS)
    with pytest.raises(DataError) as info:
        load_dataset(DataSettings(path=tmp_path))
    assert "items.csv, line 9, field 'item_id': duplicate item id 'f2' (first on line 3)" in str(
        info.value
    )


def test_empty_title(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    items = [dict(r) for r in ITEM_ROWS]
    items[3]["title"] = "   "
    write_csv(tmp_path / "items.csv", items, ITEM_FIELDS)
    with pytest.raises(DataError, match=r"items\.csv, line 5, field 'title': empty"):
        load_dataset(DataSettings(path=tmp_path))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected a number or an ISO 8601 date, got bool"),
        ([1], "expected a number or an ISO 8601 date, got list"),
        ("3rd of May", "unparseable timestamp"),
    ],
)
def test_jsonl_timestamp_types(tmp_path: Path, value: Any, message: str) -> None:
    write_tables(tmp_path, "jsonl")
    events = [dict(r) for r in EVENT_ROWS]
    events[0]["timestamp"] = value
    write_jsonl(tmp_path / "interactions.jsonl", events)
    with pytest.raises(DataError) as info:
        load_dataset(DataSettings(path=tmp_path))
    assert "interactions.jsonl, line 1, field 'timestamp'" in str(info.value)
    assert message in str(info.value)


def test_jsonl_id_types(tmp_path: Path) -> None:
    write_tables(tmp_path, "jsonl")
    events = [dict(r) for r in EVENT_ROWS]
    events[1]["user_id"] = 1.5
    write_jsonl(tmp_path / "interactions.jsonl", events)
    with pytest.raises(DataError, match=r"line 2, field 'user_id': expected a string or integer"):
        load_dataset(DataSettings(path=tmp_path))


def test_integer_ids_are_read_as_text(tmp_path: Path) -> None:
    write_tables(tmp_path, "jsonl")
    events = [{**r, "user_id": int(r["user_id"][1:])} for r in EVENT_ROWS]
    write_jsonl(tmp_path / "interactions.jsonl", events)
    data = load_dataset(DataSettings(path=tmp_path))
    assert {u.user_id for u in data.users} == {"1", "2", "3"}


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    write_tables(tmp_path, "parquet")
    events = [dict(r) for r in EVENT_ROWS]
    events[2]["item_id"] = "nope"
    pq.write_table(pa.Table.from_pylist(events), tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet, row 3, field 'item_id'"):
        load_dataset(DataSettings(path=tmp_path))


def test_parquet_missing_column(tmp_path: Path) -> None:
    write_tables(tmp_path, "parquet")
    events = [{"user_id": r["user_id"], "item_id": r["item_id"]} for r in EVENT_ROWS]
    pq.write_table(pa.Table.from_pylist(events), tmp_path / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions\.parquet, field 'timestamp': missing"):
        load_dataset(DataSettings(path=tmp_path))


def test_not_parquet(tmp_path: Path) -> None:
    write_tables(tmp_path, "parquet")
    (tmp_path / "items.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError, match=r"items\.parquet: cannot read Parquet"):
        load_dataset(DataSettings(path=tmp_path))


def test_broken_gzip(tmp_path: Path) -> None:
    write_tables(tmp_path, "jsonl.gz")
    (tmp_path / "items.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"items\.jsonl\.gz: cannot read compressed file"):
        load_dataset(DataSettings(path=tmp_path))


def test_unknown_suffix(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    (tmp_path / "events.xlsx").write_text("", encoding="utf-8")
    settings = DataSettings(path=tmp_path, interactions=Path("events.xlsx"))
    with pytest.raises(DataError, match=r"events\.xlsx: unknown table type"):
        load_dataset(settings)


def test_missing_table_file(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    settings = DataSettings(path=tmp_path, items_table=Path("gone.csv"))
    with pytest.raises(DataError, match=r"gone\.csv: file not found"):
        load_dataset(settings)


def test_lenient_counts_skips_and_keeps_the_rest(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    items = [
        *ITEM_ROWS,
        {"item_id": "f1", "domain": "food", "title": "Dup"},
        {"item_id": "x", "domain": "food", "title": ""},
    ]
    write_csv(tmp_path / "items.csv", items, ITEM_FIELDS)
    events = [
        *EVENT_ROWS,
        {"user_id": "u1", "item_id": "x", "timestamp": 50},  # its item was skipped
        {"user_id": "u1", "item_id": "zz", "timestamp": 60},
        {"user_id": "u2", "item_id": "f1", "timestamp": "soon"},
    ]
    write_csv(tmp_path / "interactions.csv", events, EVENT_FIELDS)
    data = load_dataset(DataSettings(path=tmp_path, lenient=True))
    assert rows_of(data) == EXPECTED
    assert data.report.skipped == {
        "bad item (item_id)": 1,
        "bad item (title)": 1,
        "interaction with an item not in the item table (item_id)": 2,
        "bad interaction (timestamp)": 1,
    }
    assert data.report.examples["bad interaction (timestamp)"] == ["interactions.csv:13"]


def test_lenient_logs_the_report(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _bad_events(tmp_path, 0, item_id="nope")
    with caplog.at_level("INFO", logger="agent.data.loader"):
        load_dataset(DataSettings(path=tmp_path, lenient=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "skipped 1 x interaction with an item not in the item table" in warnings[0]
    assert "interactions.csv:2" in warnings[0]


def test_csv_with_byte_order_mark(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    for name in ("items.csv", "interactions.csv"):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert rows_of(load_dataset(DataSettings(path=tmp_path))) == EXPECTED


def test_quoted_line_breaks_keep_line_numbers(tmp_path: Path) -> None:
    write_tables(tmp_path, "csv")
    items = [dict(r) for r in ITEM_ROWS]
    items[0]["description"] = "two\nlines"
    items[2]["title"] = ""
    write_csv(tmp_path / "items.csv", items, ITEM_FIELDS)
    # f3 is data row 3, but the quoted line break in row 1 puts it on line 5.
    with pytest.raises(DataError, match=r"items\.csv, line 5, field 'title': empty"):
        load_dataset(DataSettings(path=tmp_path))
