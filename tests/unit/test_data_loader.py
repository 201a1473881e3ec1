"""Format detection and the table/amazon settings as they come from config and overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import AmazonSource, DataSettings, load_settings
from agent.data.loader import detect_format, load_dataset
from agent.data.schema import DataError


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("", encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("items.jsonl", "sequences.jsonl"), "shared"),
        (("items.jsonl", "sequences.jsonl", "interactions.csv"), "shared"),
        (("items.csv", "interactions.csv"), "table"),
        (("items.jsonl", "interactions.parquet"), "table"),
        (("items.parquet", "interactions.tsv.gz"), "table"),
        (("meta_Food.json.gz", "Food.json.gz"), "amazon"),
        (("meta_Food.jsonl.gz", "reviews_Food_5.jsonl.gz"), "amazon"),
    ],
)
def test_detect_format(tmp_path: Path, names: tuple[str, ...], expected: str) -> None:
    assert detect_format(_touch(tmp_path, *names)) == expected


def test_detect_format_from_settings(tmp_path: Path) -> None:
    folder = _touch(tmp_path)
    source = AmazonSource(domain="d", reviews=Path("r.json"), meta=Path("m.json"))
    assert detect_format(folder, DataSettings(path=folder, amazon=[source])) == "amazon"
    assert detect_format(folder, DataSettings(path=folder, interactions=Path("x.csv"))) == "table"


def test_unknown_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    folder = _touch(tmp_path, "items.jsonl", "notes.txt")
    with pytest.raises(DataError) as info:
        detect_format(folder)
    assert str(info.value).startswith(f"{folder}: cannot tell the data format")
    assert "set data.format" in str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data path not found"):
        load_dataset(DataSettings(path=tmp_path / "nope"))


def test_meta_without_reviews_is_not_amazon(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot tell"):
        detect_format(_touch(tmp_path, "meta_Food.json.gz"))


def test_amazon_format_without_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Amazon files"):
        load_dataset(DataSettings(path=_touch(tmp_path), format="amazon"))


def test_table_format_without_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no interactions\.\* table"):
        load_dataset(DataSettings(path=_touch(tmp_path, "items.csv"), format="table"))


def test_table_settings_from_overrides_and_file(tmp_path: Path) -> None:
    config = tmp_path / "recbridge.yaml"
    config.write_text(
        "data:\n"
        "  format: amazon\n"
        "  amazon:\n"
        "    - {domain: food, reviews: Food.json.gz, meta: meta_Food.json.gz}\n",
        encoding="utf-8",
    )
    settings = load_settings(
        config, set_items=["data.columns.user=reviewer", "data.interactions=log.csv"]
    )
    assert settings.data.amazon[0].domain == "food"
    assert settings.data.amazon[0].meta == Path("meta_Food.json.gz")
    assert settings.data.columns.user == "reviewer"
    assert settings.data.columns.item == "item_id"
    assert settings.data.interactions == Path("log.csv")


def test_amazon_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [{"domain": "food", "reviews": "r.json.gz", "meta": "m.json.gz"}]
    monkeypatch.setenv("RECBRIDGE_DATA__AMAZON", json.dumps(sources))
    assert load_settings().data.amazon[0].reviews == Path("r.json.gz")
