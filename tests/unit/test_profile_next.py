"""Next-interest profiles: the title rule, the data builder (train rows only), parsing, prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import NextInterestSettings
from agent.data.schema import DataError, Dataset, Item, UserSequence
from agent.profiles.parsing import ParseError
from finetune.build import LeakageError
from finetune.profile_data import (
    ProfileExample,
    ProfileManifest,
    TitleRule,
    build_next_interest,
    check_profile_leakage,
    read_profile_examples,
    read_profile_manifest,
    write_profile_examples,
)
from finetune.profile_render import (
    NextInterest,
    NextInterestPrompt,
    next_interest_schema,
    parse_next_interest,
    query_text,
)

CATALOGUE = [
    "OXO Good Grips Salad Spinner",
    "OXO Good Grips Can Opener, Black",
    "OXO Good Grips 3-Piece Mixing Bowl Set",
    "OXO Steel Cocktail Shaker",
    "Wilton Round Cake Pan, 9 Inch",
    "Wilton Fondant Silicone Mold",
    "Wilton Cookie Cutter Set, 12-Piece",
    "Wilton Icing Tips",
    "The Switch Sparkling Juice, Black Cherry, 8-Ounce Cans (Pack of 24)",
    "The Switch Sparkling Juice, Kiwi Berry",
    "The Switch Sparkling Juice, Watermelon",
    "Haribo Gummi Candy, Centipedes, 5-Pound Bag",
    "Haribo Gummi Candy, Goldbears",
    "Haribo Gummi Candy, Twin Snakes",
    "1200 Series KING Size 4pc Microfiber Bed Sheet Set",
    "Keurig, The Original Donut Shop, 50 Count K-Cup Packs",
    "Nordic Ware Bundt Pan with Handles",
    "Nordic Ware Baking Sheet",
    "Nordic Ware Microwave Egg Poacher",
    "Crocodile Creek Lunchbox - Solar System 10&quot; x 7.5&quot;",
]


@pytest.fixture(scope="module")
def rule() -> TitleRule:
    return TitleRule(CATALOGUE)


@pytest.mark.parametrize(
    ("title", "brand", "kind"),
    [
        # extends while >= 60% of the prefix's titles share the next word (and >= 3 do)
        ("OXO Good Grips Salad Spinner", "OXO Good Grips", "salad spinner"),
        # 1 of 4 OXO titles continue with "Steel": the brand stays "OXO"
        ("OXO Steel Cocktail Shaker", "OXO", "steel cocktail shaker"),
        # the next words vary: one word; size words and numbers leave the kind
        ("Wilton Round Cake Pan, 9 Inch", "Wilton", "round cake pan"),
        ("Wilton Cookie Cutter Set, 12-Piece", "Wilton", "cookie cutter set"),
        # a leading article takes the next word along
        ("The Switch Sparkling Juice, Kiwi Berry", "The Switch Sparkling", "juice"),
        # a brand that would leave no kind is cut back a word
        ("Haribo Gummi Candy, Goldbears", "Haribo Gummi", "candy"),
        # a title starting with a digit has no brand
        ("1200 Series KING Size 4pc Microfiber Bed Sheet Set", "", "bed sheet set"),
        # the head segment is the brand alone: the next segment gives the kind
        ("Keurig, The Original Donut Shop, 50 Count K-Cup Packs", "Keurig", "original donut shop"),
        # " with " ends the head phrase
        ("Nordic Ware Bundt Pan with Handles", "Nordic Ware", "bundt pan"),
        # " - " ends it too; HTML entities are decoded
        (
            "Crocodile Creek Lunchbox - Solar System 10&quot; x 7.5&quot;",
            "Crocodile",
            "creek lunchbox",
        ),
    ],
)
def test_title_rule_brand_and_kind(rule: TitleRule, title: str, brand: str, kind: str) -> None:
    assert rule.brand_kind(title) == (brand, kind)


def test_category_from_field_or_head_noun(rule: TitleRule) -> None:
    with_field = Item("a", "kitchen", "Wilton Icing Tips", categories=("Kitchen", "Baking Tools"))
    assert TitleRule.category(with_field, "icing tips") == "Baking Tools"
    plain = Item("b", "kitchen", "Wilton Icing Tips")
    assert TitleRule.category(plain, "icing tips") == "tips"
    # a generic head ("set") gives way to the word before it
    assert TitleRule.category(plain, "cookie cutter set") == "cutter"
    assert TitleRule.category(plain, "") == ""


def test_profile_of_next_items_dedupes_and_bounds(rule: TitleRule) -> None:
    items = [
        Item("1", "kitchen", "Wilton Round Cake Pan, 9 Inch"),
        Item("2", "kitchen", "Wilton Fondant Silicone Mold"),
        Item("3", "kitchen", "Nordic Ware Baking Sheet"),
    ]
    profile = rule.profile(items, max_items=2)
    assert profile.brands == ["Wilton", "Nordic Ware"]  # Wilton once
    assert profile.kinds == ["round cake pan", "fondant silicone mold"]  # bounded at 2
    assert profile.categories == ["pan", "mold"]
    assert json.loads(profile.answer_json()) == {
        "categories": ["pan", "mold"],
        "kinds": ["round cake pan", "fondant silicone mold"],
        "brands": ["Wilton", "Nordic Ware"],
    }
    assert list(json.loads(profile.answer_json())) == ["categories", "kinds", "brands"]


def test_parse_next_interest_repairs_and_rejects() -> None:
    fenced = 'Sure!\n```json\n{"categories": ["pan"], "kinds": ["cake pan", "Cake Pan "], '
    fenced += '"brands": ["Wilton"], "extra": 1}\n```'
    profile, repaired = parse_next_interest(fenced, max_items=4)
    assert repaired
    assert profile.kinds == ["cake pan"]  # case-insensitive duplicate dropped
    cut, repaired = parse_next_interest('{"categories": ["pan"], "kinds": ["cake', 4)
    assert repaired and cut.kinds == ["cake"] and cut.brands == []
    with pytest.raises(ParseError, match="empty profile"):
        parse_next_interest('{"categories": [], "kinds": [" "], "brands": []}', 4)
    with pytest.raises(ParseError):
        parse_next_interest("no json here", 4)
    with pytest.raises(ParseError, match="wrong schema"):
        parse_next_interest('{"categories": "pan"}', 4)


def test_query_text_and_schema() -> None:
    profile = NextInterest(categories=["pan"], kinds=["cake pan"], brands=["Wilton", "wilton"])
    assert query_text(profile) == "cake pan; Wilton; pan"
    schema = next_interest_schema(3, 20)
    assert schema["required"] == ["categories", "kinds", "brands"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["brands"]["maxItems"] == 3


def _dataset() -> Dataset:
    titles = {
        "k1": ("kitchen", "Wilton Round Cake Pan, 9 Inch"),
        "k2": ("kitchen", "Wilton Fondant Silicone Mold"),
        "k3": ("kitchen", "Nordic Ware Baking Sheet"),
        "k4": ("kitchen", "OXO Good Grips Salad Spinner"),
        "k5": ("kitchen", "OXO Steel Cocktail Shaker"),
        "f1": ("food", "Haribo Gummi Candy, Goldbears"),
        "f2": ("food", "The Switch Sparkling Juice, Kiwi Berry"),
        "f3": ("food", "Keurig, The Original Donut Shop, 50 Count K-Cup Packs"),
    }
    items = {i: Item(i, d, t) for i, (d, t) in titles.items()}
    users = [
        UserSequence("t1", "train", ("k1", "f1", "k2", "f2", "k3", "k4")),
        UserSequence("t2", "train", ("f1", "f2", "k1", "f3", "k5")),
        UserSequence("t3", "train", ("k4", "k5", "f3", "k1", "k2", "f1", "k3")),
        UserSequence("t4", "train", ("k3",)),  # too short: never sampled
        UserSequence("v1", "valid", ("k1", "k2", "k3", "k4")),
        UserSequence("x1", "test", ("f1", "f2", "f3", "k5")),
    ]
    return Dataset(name="crafted", items=items, users=users)


def _build(data: Dataset, **kw: int) -> list[ProfileExample]:
    args = {"max_examples": 20, "per_user": 3, "next_items": 2, "max_list_items": 4, "seed": 7}
    args.update(kw)
    return build_next_interest(data, TitleRule.of(data), **args)


def test_builder_uses_train_rows_only_and_the_next_items_of_the_domain() -> None:
    data = _dataset()
    examples = _build(data)
    assert examples and {ex.user_id for ex in examples} <= {"t1", "t2", "t3"}
    check_profile_leakage(examples, data)
    rows = {u.user_id: u.items for u in data.users}
    for ex in examples:
        row, cut = rows[ex.user_id], len(ex.history)
        assert tuple(ex.history) == row[:cut] and cut >= 1
        assert ex.next_items[0] == row[cut]
        assert ex.domain == data.items[row[cut]].domain
        expected = [i for i in row[cut:] if data.items[i].domain == ex.domain][:2]
        assert ex.next_items == expected
        rule_answer = TitleRule.of(data).profile([data.items[i] for i in expected], 4)
        assert ex.answer == rule_answer
    assert _build(data) == examples  # seeded: the same examples again
    assert len(_build(data, max_examples=2)) == 2


def test_leakage_check_catches_held_out_users_and_foreign_items() -> None:
    data = _dataset()
    good = _build(data)[0]
    answer = NextInterest(kinds=["x"])
    held_out = ProfileExample(
        id="v1:2",
        user_id="v1",
        history=["k1", "k2"],
        domain="kitchen",
        next_items=["k3"],
        answer=answer,
    )
    with pytest.raises(LeakageError, match="valid/test user"):
        check_profile_leakage([good, held_out], data)
    foreign = good.model_copy(update={"next_items": [good.next_items[0], "k99"]})
    with pytest.raises(LeakageError, match="not a cut"):
        check_profile_leakage([foreign], data)
    shifted = good.model_copy(update={"history": good.history[:-1]})
    if shifted.history:
        with pytest.raises(LeakageError, match="not a cut"):
            check_profile_leakage([shifted], data)


def test_write_read_roundtrip_and_bad_line(tmp_path: Path) -> None:
    data = _dataset()
    examples = _build(data)
    manifest = ProfileManifest.describe(
        examples,
        seed=7,
        source_rows=3,
        next_items=2,
        data_fingerprint="abc",
        templates={"profile_next.j2": "sha"},
        settings={},
    )
    assert manifest.examples == len(examples)
    assert sum(manifest.per_domain.values()) == len(examples)
    path = tmp_path / "next-interest.jsonl"
    write_profile_examples(path, examples, manifest)
    assert read_profile_examples(path) == examples
    assert read_profile_manifest(path) == manifest
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"id": "x", "user_id": "t1"}\n')
    with pytest.raises(DataError, match=rf"line {len(examples) + 1}"):
        read_profile_examples(path)
    with pytest.raises(DataError, match="next-interest"):
        read_profile_examples(tmp_path / "missing.jsonl")


def test_prompt_shows_recent_titles_and_the_domain() -> None:
    data = _dataset()
    cfg = NextInterestSettings(history_items=2, title_chars=20, max_list_items=3)
    prompt = NextInterestPrompt(data, cfg)
    messages = prompt.messages(["k1", "f1", "k2"], "food")
    user = messages[-1].content
    assert "[food] Haribo Gummi Candy" in user and "[kitchen] Wilton Fondant" in user
    assert "Round Cake Pan" not in user  # only the 2 most recent
    assert "next in food" in user and "at most 3" in user
    request = prompt.request(["k1"], "kitchen", adapter="profile-next")
    assert request.adapter == "profile-next" and request.json_schema is not None
    assert prompt.history_titles_text(["k1", "f1", "k2"]).startswith("Haribo Gummi Candy")
