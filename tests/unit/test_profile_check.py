"""The profile checker on crafted profiles: invented brands, corrupt ids, contradictions."""

from __future__ import annotations

import pytest

from agent.data.schema import Dataset, Item, UserSequence
from agent.profiles.check import AttributeVocabulary, ProfileChecker, repeated_sentences
from agent.profiles.schema import Profile, grounded_json_schema

CATALOGUE = {
    "B000000001": ("food", "Lipton Green Tea Bags, 100 Count"),
    "B000000002": ("food", "Lipton Black Tea Bags"),
    "B000000003": ("food", "Campbell's Chicken Noodle Soup"),
    "B000000004": ("kitchen", "Lodge Cast Iron Skillet"),
    "B000000005": ("kitchen", "Lodge Cast Iron Griddle"),
    "B000000006": ("kitchen", "Lodge Dutch Oven"),
    "B000000007": ("kitchen", "KRUPS ZY501D50 Stainless Steel Juice Extractor"),
    "B000000008": ("food", "Campbell's Tomato Soup"),
    "B000000009": ("food", "Campbell's Beef Soup"),
    "B000000010": ("kitchen", "Pyrex Glass Skillet"),
    "B000000011": ("kitchen", "Pyrex Measuring Cup"),
    "B000000012": ("kitchen", "Pyrex Mixing Bowl"),
    "B000000013": ("food", "Knorr Chicken Soup"),
    "B000000014": ("food", "Lipton Chicken Soup"),
}
HISTORY = ["B000000001", "B000000003", "B000000007"]


@pytest.fixture(scope="module")
def checker() -> ProfileChecker:
    items = {i: Item(i, dom, title) for i, (dom, title) in CATALOGUE.items()}
    users = [UserSequence("t1", "test", (*HISTORY, "B000000004"))]
    return ProfileChecker(Dataset("check", items, users))


def test_a_faithful_profile_passes(checker: ProfileChecker) -> None:
    profile = Profile(
        summary="Drinks Lipton green tea and eats Campbell's soup.",
        preferences=["Lipton", "soup"],
        evidence_item_ids=["B000000001", "B000000003"],
    )
    found = checker.check(profile, HISTORY)
    assert found.ok, found.problems()
    assert found.cited_ids == found.valid_ids == 2
    assert found.named >= 3 and found.supported == found.named


def test_an_invented_brand_is_caught(checker: ProfileChecker) -> None:
    profile = Profile(summary="Loves Lodge cookware and Lipton tea.")
    found = checker.check(profile, HISTORY)
    assert found.unsupported == ["lodge"] and not found.ok
    assert found.supported == found.named - 1
    # Lower-case "lodge" is a word, not the brand: brand words count only capitalised.
    assert "lodge" not in checker.check(Profile(summary="a tea lodge"), HISTORY).unsupported


def test_a_corrupt_id_is_caught_but_a_model_number_from_a_title_is_not(
    checker: ProfileChecker,
) -> None:
    profile = Profile(
        summary="Bought the KRUPS ZY501D50 juicer.",
        preferences=["B003BZYZ"],
        evidence_item_ids=["B000000001", "B000000004"],  # the second is the held-out target
    )
    found = checker.check(profile, HISTORY, dropped_ids=1)
    assert found.cited_ids == 4 and found.valid_ids == 1
    assert "B003BZYZ" in found.bad_ids and "B000000004" in found.bad_ids
    assert "ZY501D50" not in found.bad_ids


def test_liked_and_disliked_is_a_contradiction(checker: ProfileChecker) -> None:
    profile = Profile(
        summary="Likes tea.",
        preferences=["green tea", "Campbell's soup"],
        dislikes=["Campbell's soup", "B000000001 tea bags", "spicy food"],
        evidence_item_ids=["B000000001"],
    )
    found = checker.check(profile, HISTORY)
    assert found.contradictions == ["Campbell's soup", "B000000001 tea bags"]


def test_repeats_and_the_repair_of_a_summary(checker: ProfileChecker) -> None:
    text = "Loves artisanal tea. Loves artisanal tea. Buys Lipton tea, also Lodge pans."
    assert repeated_sentences(text) == 1
    mended = checker.repair_text(text, HISTORY)
    assert mended == "Loves artisanal tea. Buys Lipton tea."
    assert checker.check(Profile(summary=mended), HISTORY).ok
    assert checker.names_a_fact(mended, HISTORY)
    assert not checker.names_a_fact("The list contains a list of facts.", HISTORY)


def test_vocabulary_needs_three_items() -> None:
    vocab = AttributeVocabulary(things=["soup"], brands=["lodge", "soup"])
    assert vocab.named("Lodge soup, lodge") == ["lodge", "soup"]
    assert "soup" not in vocab.brands


def test_a_loop_within_a_sentence_counts_and_is_mended(checker: ProfileChecker) -> None:
    text = "Buys Lipton tea, great soup, great soup, great soup"
    assert repeated_sentences(text) == 2
    assert checker.repair_text(text, HISTORY) == "Buys Lipton tea, great soup."


def test_the_grounded_schema_allows_only_the_facts() -> None:
    schema = grounded_json_schema(["Lipton", "tea", "tea"], ["B000000001"], [], max_items=4)
    props = schema["properties"]
    assert list(props)[-1] == "summary" and schema["required"] == list(props)
    assert props["preferences"]["items"]["enum"] == ["Lipton", "tea"]
    assert props["preferences"]["minItems"] == props["preferences"]["maxItems"] == 2
    assert props["evidence_item_ids"]["items"]["enum"] == ["B000000001"]
    assert props["dislikes"]["maxItems"] == 0 and props["cross_domain_themes"]["maxItems"] == 0
    assert not schema["additionalProperties"]


def test_words_in_no_title_are_measured(checker: ProfileChecker) -> None:
    found = checker.check(Profile(summary="Buys Lipton tea and BIBBLARIES."), HISTORY)
    assert found.unknown_words == ["bibblary"] and found.ok  # measured, not (yet) a failure
