"""Profile facts: computed from the history given and nothing else, with their evidence."""

from __future__ import annotations

import pytest

from agent.data.schema import Dataset, Item, UserSequence
from agent.profiles.facts import FactsBuilder, content_words, stem

TITLES = {
    "f1": ("food", "Twinings Green Tea Bags, 100 Count"),
    "f2": ("food", "Twinings Earl Grey Tea, 50 Count"),
    "f3": ("food", "Bigelow Chai Tea Latte, 6 Boxes"),
    "f4": ("food", "Knorr Pasta Sides, Butter & Herb, 4.4 Ounce"),
    "f5": ("food", "Knorr Rice Sides, Chicken, 5.6 Ounce"),
    "k1": ("kitchen", "Pyrex Glass Tea Kettle, 1.5 Quart"),
    "k2": ("kitchen", "Lodge Cast Iron Skillet, 10 Inch"),
    "k3": ("kitchen", "Lodge Cast Iron Griddle"),
    "k9": ("kitchen", "OXO Good Grips Salad Spinner"),
}


@pytest.fixture()
def data() -> Dataset:
    items = {i: Item(i, dom, title) for i, (dom, title) in TITLES.items()}
    users = [
        UserSequence("u1", "train", ("f1", "k2", "f2", "k1", "f3", "f4", "k3", "f1")),
        UserSequence("t1", "test", ("f1", "k1", "f2", "k9")),
    ]
    return Dataset("facts", items, users)


def test_counts_recency_evidence_and_repeats(data: Dataset) -> None:
    history = ("f1", "k2", "f2", "k1", "f3", "f4", "k3", "f1")
    facts = FactsBuilder(data)(history)
    food = facts.domain("food")
    kitchen = facts.domain("kitchen")
    assert food is not None and kitchen is not None
    assert food.items == 5 and kitchen.items == 3
    top = food.brands[0]
    assert top.value == "Twinings" and top.count == 3 and set(top.item_ids) == {"f1", "f2"}
    # Newest purchase weighs 1, one purchase back 0.5 ** (1/10), and so on.
    assert top.weight == pytest.approx(1 + 0.5 ** (5 / 10) + 0.5 ** (7 / 10), abs=1e-3)
    assert [f.value for f in kitchen.brands][:1] == ["Lodge"]
    assert food.recent[0] == "f1" and kitchen.recent == ["k3", "k1", "k2"]
    assert [r.item_ids for r in food.repeats] == [["f1"]]  # bought twice
    assert any(k.value == "tea" and k.count == 4 for k in food.keywords)
    # tea in food and in kitchen (a tea kettle) links the domains, with evidence from both.
    link = next(link for link in facts.links if link.term == "tea")
    assert set(link.item_ids) == {"food", "kitchen"} and link.item_ids["kitchen"] == ["k1"]
    # Every fact rests on history items only.
    assert set(facts.evidence()) <= set(history)


def test_facts_never_see_later_items(data: Dataset) -> None:
    """A held-out user's facts come from the history: the target changes nothing."""
    user = data.split("test")[0]
    builder = FactsBuilder(data)
    facts = builder(user.history)
    assert "k9" not in facts.evidence() and facts.domain("kitchen") is not None
    assert all(b.value != "OXO Good Grips" for d in facts.domains for b in d.brands)
    extended = builder((*user.history, "k2"))
    assert facts == FactsBuilder(data)(user.history)  # deterministic, and memoised apart
    assert extended.domain("kitchen") != facts.domain("kitchen")


def test_words() -> None:
    assert stem("teas") == "tea" and stem("campbell's") == "campbell" and stem("glass") == "glass"
    assert content_words("The BEST 100 Teas for you!") == ["tea"]
