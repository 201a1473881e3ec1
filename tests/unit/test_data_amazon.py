"""Amazon review dumps, 2018 and 2023 editions, as small .gz files crafted here."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import AmazonSource, DataSettings
from agent.data.amazon import discover_sources, read_amazon
from agent.data.loader import detect_format, load_dataset
from agent.data.schema import DataError, Dataset


def write_gz(path: Path, rows: list[Any]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def review_2018(user: str, asin: str, seconds: int) -> dict[str, Any]:
    return {"reviewerID": user, "asin": asin, "unixReviewTime": seconds, "overall": 5.0}


def review_2023(user: str, parent: str | None, millis: int, asin: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"user_id": user, "asin": asin or f"{parent}-v", "timestamp": millis}
    if parent is not None:
        row["parent_asin"] = parent
    return {**row, "rating": 4.0}


FOOD_META_2018: list[dict[str, Any]] = [
    {
        "asin": "F1",
        "title": "Tea",
        "category": ["Grocery", "Tea"],
        "description": ["Green", "tea"],
        "brand": "Leaf",
        "price": "$3.00",
    },
    {"asin": "F2", "title": "Rice", "category": [], "description": "Long grain", "price": ""},
    {"asin": "F3", "title": "Salt"},
    {"asin": "F1", "title": "Tea", "category": ["Grocery", "Tea"]},  # 2018 repeats rows
    {"asin": "F9", "title": ""},  # nobody reviewed it: not checked
]
KITCHEN_META_2023: list[dict[str, Any]] = [
    {
        "parent_asin": "K1",
        "title": "Kettle",
        "categories": ["Kitchen", "Kettles"],
        "description": ["Boils", "water"],
        "store": "Steam",
        "price": 25.5,
        "main_category": "Home",
    },
    {
        "parent_asin": "K2",
        "title": "Mug",
        "categories": [],
        "description": [],
        "store": None,
        "price": None,
        "main_category": "Home",
    },
    {"parent_asin": "K3", "title": "Tray", "categories": [], "price": "None"},
]


def write_domains(folder: Path, food_reviews: list[Any], kitchen_reviews: list[Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_gz(folder / "Food.json.gz", food_reviews)
    write_gz(folder / "meta_Food.json.gz", FOOD_META_2018)
    write_gz(folder / "Kitchen.jsonl.gz", kitchen_reviews)
    write_gz(folder / "meta_Kitchen.jsonl.gz", KITCHEN_META_2023)
    return folder


# Food in 2018 (seconds), kitchen in 2023 (milliseconds): interleaved by real time.
FOOD = [
    review_2018("alice", "F1", 100),
    review_2018("alice", "F2", 300),
    review_2018("bob", "F1", 50),
    review_2018("bob", "F3", 60),
    review_2018("carol", "F2", 10),
]
KITCHEN = [
    review_2023("alice", "K1", 200_000),
    review_2023("alice", "K2", 400_000),
    review_2023("bob", None, 70_000, asin="K3"),  # no parent_asin: falls back to asin
    review_2023("carol", "K1", 5_000),
]


def sources(folder: Path) -> list[AmazonSource]:
    return [
        AmazonSource(
            domain="food", reviews=folder / "Food.json.gz", meta=folder / "meta_Food.json.gz"
        ),
        AmazonSource(
            domain="kitchen",
            reviews=folder / "Kitchen.jsonl.gz",
            meta=folder / "meta_Kitchen.jsonl.gz",
        ),
    ]


def rows_of(data: Dataset) -> dict[tuple[str, str], tuple[str, ...]]:
    return {(u.split, u.user_id): u.items for u in data.users}


def test_two_editions_joined_by_user_and_time(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, KITCHEN)
    data = read_amazon(sources(folder))
    assert data.name == "food+kitchen"
    assert rows_of(data) == {
        ("train", "alice"): ("F1", "K1"),
        ("valid", "alice"): ("F1", "K1", "F2"),
        ("test", "alice"): ("F1", "K1", "F2", "K2"),
        ("train", "bob"): ("F1",),
        ("valid", "bob"): ("F1", "F3"),
        ("test", "bob"): ("F1", "F3", "K3"),
        ("train", "carol"): ("K1", "F2"),
    }
    assert data.report.notes == [
        "1 repeated meta rows in meta_Food.json.gz read once",
        "1 users with fewer than 3 interactions: train row only",
    ]
    assert data.report.total_skipped == 0


def test_item_text_fields_of_both_editions(tmp_path: Path) -> None:
    data = read_amazon(sources(write_domains(tmp_path, FOOD, KITCHEN)))
    tea, rice, kettle, mug, tray = (data.items[i] for i in ("F1", "F2", "K1", "K2", "K3"))
    assert (tea.domain, tea.title, tea.categories) == ("food", "Tea", ("Grocery", "Tea"))
    assert (tea.description, tea.brand, tea.price) == ("Green tea", "Leaf", "$3.00")
    assert (rice.description, rice.categories, rice.price) == ("Long grain", (), "")
    assert (kettle.domain, kettle.brand, kettle.price) == ("kitchen", "Steam", "25.5")
    assert kettle.description == "Boils water"
    assert kettle.categories == ("Kitchen", "Kettles")
    assert mug.categories == ("Home",)  # empty categories: main_category instead
    assert (mug.brand, mug.price, mug.description) == ("", "", "")
    assert tray.price == ""  # "None" means no price
    assert set(data.items) == {"F1", "F2", "F3", "K1", "K2", "K3"}


def test_2023_reviews_and_2018_meta_in_one_domain(tmp_path: Path) -> None:
    write_gz(tmp_path / "r.jsonl.gz", [review_2023("u", f"F{i}", i * 1000) for i in (1, 2, 3)])
    write_gz(tmp_path / "m.json.gz", FOOD_META_2018[:3])
    data = read_amazon(
        [AmazonSource(domain="food", reviews=tmp_path / "r.jsonl.gz", meta=tmp_path / "m.json.gz")]
    )
    assert rows_of(data)["test", "u"] == ("F1", "F2", "F3")


def test_k_core_from_settings(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, KITCHEN)
    data = load_dataset(DataSettings(path=folder, amazon=sources(folder), k_core=2))
    # F1, F2, K1 have 2 reviews each; F3, K2, K3 one: bob is left with [F1] and goes,
    # which takes F1 below 2; alice keeps [K1, F2] and carol [K1, F2].
    assert rows_of(data) == {("train", "alice"): ("K1", "F2"), ("train", "carol"): ("K1", "F2")}
    assert data.report.notes[1].startswith("2-core: removed 1 users, 4 items, 5 interactions")


def test_discovered_from_folder_names(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, KITCHEN)
    found = discover_sources(folder)
    assert [(s.domain, s.reviews.name, s.meta.name) for s in found] == [
        ("Food", "Food.json.gz", "meta_Food.json.gz"),
        ("Kitchen", "Kitchen.jsonl.gz", "meta_Kitchen.jsonl.gz"),
    ]
    assert detect_format(folder) == "amazon"
    data = load_dataset(DataSettings(path=folder))
    assert data.domains == ["Food", "Kitchen"]


def test_relative_paths_in_settings_are_read_from_the_data_folder(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, KITCHEN)
    relative = [
        AmazonSource(domain=s.domain, reviews=Path(s.reviews.name), meta=Path(s.meta.name))
        for s in sources(folder)
    ]
    data = load_dataset(DataSettings(path=folder, amazon=relative))
    assert len(data.split("test")) == 2


def test_plain_json_lines_work_too(tmp_path: Path) -> None:
    (tmp_path / "reviews.json").write_text(
        "\n".join(json.dumps(review_2018("u", f"F{i}", i)) for i in (1, 2, 3)) + "\n",
        encoding="utf-8",
    )
    write_gz(tmp_path / "meta.json.gz", FOOD_META_2018)
    source = AmazonSource(
        domain="food", reviews=tmp_path / "reviews.json", meta=tmp_path / "meta.json.gz"
    )
    assert rows_of(read_amazon([source]))["test", "u"] == ("F1", "F2", "F3")


# --- bad input ------------------------------------------------------------------------------


def test_meta_without_title(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, KITCHEN)
    meta = [dict(m) for m in KITCHEN_META_2023]
    meta[1]["title"] = "  "
    write_gz(folder / "meta_Kitchen.jsonl.gz", meta)
    with pytest.raises(DataError) as info:
        read_amazon(sources(folder))
    assert "meta_Kitchen.jsonl.gz, line 2, field 'title': empty" in str(info.value)


def test_review_of_item_without_meta(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, [*FOOD, review_2018("dan", "F404", 1)], KITCHEN)
    with pytest.raises(DataError) as info:
        read_amazon(sources(folder))
    text = str(info.value)
    assert "Food.json.gz, line 6, field 'asin'" in text
    assert "item 'F404' has no usable meta" in text


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        ({"reviewerID": "x", "unixReviewTime": 1}, "asin", "missing"),
        (
            {"reviewerID": "x", "asin": "F1", "unixReviewTime": "later"},
            "unixReviewTime",
            "unparseable timestamp",
        ),
        (
            {"reviewerID": ["x"], "asin": "F1", "unixReviewTime": 1},
            "reviewerID",
            "expected a string or integer id, got list",
        ),
    ],
)
def test_bad_review_line(tmp_path: Path, bad: dict[str, Any], field: str, message: str) -> None:
    folder = write_domains(tmp_path, [FOOD[0], bad], KITCHEN)
    with pytest.raises(DataError) as info:
        read_amazon(sources(folder))
    assert f"Food.json.gz, line 2, field '{field}'" in str(info.value)
    assert message in str(info.value)


def test_not_a_review_file(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, [{"hello": 1}], KITCHEN)
    with pytest.raises(DataError, match=r"Food\.json\.gz, line 1: not an Amazon review"):
        read_amazon(sources(folder))


def test_same_item_in_two_domains(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, [*KITCHEN, review_2023("erin", "F1", 1)])
    write_gz(
        folder / "meta_Kitchen.jsonl.gz",
        [*KITCHEN_META_2023, {"parent_asin": "F1", "title": "Tea pot"}],
    )
    with pytest.raises(DataError) as info:
        read_amazon(sources(folder))
    assert "meta_Kitchen.jsonl.gz, line 4, field 'parent_asin'" in str(info.value)
    assert "already read from meta_Food.json.gz:1" in str(info.value)


def test_domain_named_twice(tmp_path: Path) -> None:
    folder = write_domains(tmp_path, FOOD, KITCHEN)
    with pytest.raises(DataError, match="a domain is named twice"):
        read_amazon([sources(folder)[0], sources(folder)[0]])


def test_lenient_skips_are_counted(tmp_path: Path) -> None:
    food = [*FOOD, review_2018("dan", "F404", 1), "{oops", {"reviewerID": "x"}]
    folder = write_domains(tmp_path, food, [*KITCHEN, review_2023("erin", "K2", 1)])
    meta = [dict(m) for m in KITCHEN_META_2023]
    meta[1]["title"] = ""  # K2: its two reviews go too
    write_gz(folder / "meta_Kitchen.jsonl.gz", meta)
    data = read_amazon(sources(folder), lenient=True)
    assert data.report.skipped == {
        "malformed JSON line": 1,
        "bad review (asin)": 1,
        "bad meta (title)": 1,
        "review of an item without usable meta": 3,  # F404 once, K2 twice
    }
    assert "K2" not in data.items
    assert rows_of(data)["test", "alice"] == ("F1", "K1", "F2")
    assert data.report.examples["bad meta (title)"] == ["meta_Kitchen.jsonl.gz:2"]
