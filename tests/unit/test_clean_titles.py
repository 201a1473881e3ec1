"""Titles are decoded once, when data is read; long ones get a display title."""

from __future__ import annotations

import json
from pathlib import Path

from agent.data.reslice import write_shared
from agent.data.schema import Item, display_title
from agent.data.shared_format import read_shared
from agent.items.text import item_text

# Titles as food-kitchen has them (the entities are in the source data).
RAW = {
    "B00BEB9BOA": "Bear Naked Fit Granola, Oats &amp; Honey, 12 Ounce (Pack of 6)",
    "B000EDG3UE": "Bob's Red Mill Whole Wheat Flour, 5-pound (Pack of 4)",
    "B0000CFMU4": "Wilton Decorator Preferred&trade; Icing Tips &#8211; Set of 3",
    "B00A8NK7OS": (
        "#1 Garlic & Gourmet Ginger Press from JAPAN with FREE LIFETIME GUARANTEE - CRUSH YOUR "
        "GARLIC IN SECONDS - Professional quality stainless steel, easy to clean, dishwasher safe"
    ),
}


def _write(folder: Path) -> Path:
    folder.mkdir()
    with (folder / "items.jsonl").open("w", encoding="utf-8") as out:
        for i, (iid, title) in enumerate(RAW.items()):
            domain = "food" if i < 2 else "kitchen"
            out.write(json.dumps({"item_id": iid, "domain": domain, "title": title}) + "\n")
    rows = [{"user_id": "u1", "split": "train", "items": list(RAW)}]
    (folder / "sequences.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    return folder


def test_entities_are_decoded_when_read(tmp_path: Path) -> None:
    data = read_shared(_write(tmp_path / "d"))
    assert (
        data.items["B00BEB9BOA"].title
        == "Bear Naked Fit Granola, Oats & Honey, 12 Ounce (Pack of 6)"
    )
    assert data.items["B0000CFMU4"].title == "Wilton Decorator Preferred™ Icing Tips – Set of 3"
    assert data.items["B000EDG3UE"].title == RAW["B000EDG3UE"]  # nothing to decode
    assert data.items["B000EDG3UE"].source_title == ""
    assert all("&amp;" not in it.title and "&#" not in it.title for it in data.items.values())


def test_the_embedded_text_keeps_the_source_title(tmp_path: Path) -> None:
    """Trained checkpoints rest on vectors of the source text: decoding changes none of it."""
    data = read_shared(_write(tmp_path / "d"))
    item = data.items["B00BEB9BOA"]
    assert item.source_title == RAW["B00BEB9BOA"]
    assert item_text(item).startswith("Bear Naked Fit Granola, Oats &amp; Honey")
    # Written back out (data reslice), the data reads back the same.
    write_shared(data, tmp_path / "again")
    again = read_shared(tmp_path / "again")
    assert again.items == data.items


def test_display_title_cuts_ad_copy_at_a_word_boundary() -> None:
    item = Item.read("B00A8NK7OS", "kitchen", RAW["B00A8NK7OS"])
    shown = item.display_title
    assert len(shown) <= 91 and shown.endswith("…")
    assert RAW["B00A8NK7OS"].startswith(shown[:-1])
    assert RAW["B00A8NK7OS"][len(shown) - 1] == " "  # cut between words
    assert item.title == RAW["B00A8NK7OS"]  # the full title is still there
    assert display_title("Short title") == "Short title"
