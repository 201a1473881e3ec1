"""Item text rendering from the Jinja2 template."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_settings
from agent.data.schema import Item
from agent.items.text import PROMPTS_DIR, ItemTextRenderer, cut, item_text, renderer_for

FULL = Item(
    item_id="A1",
    domain="kitchen",
    title="  Chef's   Knife 8 inch ",
    categories=("Home & Kitchen", "Cutlery", "Chef's Knives"),
    description="Forged " + "steel " * 300,
    brand="Wüsthof",
    price="$99",
)


def test_title_only_item_is_just_the_title() -> None:
    assert item_text(Item("B1", "food", "Sea Salt, 1 lb")) == "Sea Salt, 1 lb"


def test_all_fields_present_collapsed_and_cut() -> None:
    text = item_text(FULL)
    assert text.startswith("Chef's Knife 8 inch. Brand: Wüsthof. Categories: Home & Kitchen > ")
    assert "Forged steel" in text
    assert "\n" not in text and "  " not in text
    assert len(text) < 200 + 60 + 160 + 500 + 60  # every field is cut
    assert "$99" not in text  # price is not part of the semantics we embed


def test_cut_keeps_words_and_marks_the_cut() -> None:
    assert cut("short", 10) == "short"
    out = cut("alpha beta gamma delta", 12)
    assert out == "alpha beta…"
    assert cut("x" * 50, 10) == "x" * 10 + "…"  # no space: hard cut


def test_template_hash_tracks_content(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ item.title }}", encoding="utf-8")
    first = ItemTextRenderer("t.j2", tmp_path)
    (tmp_path / "t.j2").write_text("{{ item.title }} ({{ item.domain }})", encoding="utf-8")
    second = ItemTextRenderer("t.j2", tmp_path)
    assert first.template_hash != second.template_hash
    assert second.item_text(FULL) == "Chef's Knife 8 inch (kitchen)"
    assert ItemTextRenderer("t.j2", tmp_path).template_hash == second.template_hash


def test_settings_pick_the_template() -> None:
    settings = load_settings(overrides={"embedding.template": "item_text.j2"})
    renderer = renderer_for(settings)
    assert renderer.template_name == "item_text.j2"
    assert (PROMPTS_DIR / "item_text.j2").is_file()
    with pytest.raises(FileNotFoundError, match=r"nope\.j2"):
        ItemTextRenderer("nope.j2")
