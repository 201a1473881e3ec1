"""Profiles from bad LLM text: each failure mode gives a clear ParseError or a repaired profile."""

from __future__ import annotations

import json

import pytest

from agent.profiles.parsing import ParseError, extract_json, parse_profile
from agent.profiles.schema import Profile, profile_json_schema

HISTORY = {"B001", "B002", "B003"}
GOOD = {
    "summary": "Bakes bread at home and drinks green tea.",
    "preferences": ["sourdough", "loose-leaf tea"],
    "dislikes": ["instant coffee"],
    "cross_domain_themes": ["artisanal, hands-on cooking"],
    "evidence_item_ids": ["B001", "B003"],
}


def test_plain_json_parses_without_repair() -> None:
    parsed = parse_profile(json.dumps(GOOD), HISTORY)
    assert parsed.profile == Profile(**GOOD)  # type: ignore[arg-type]
    assert not parsed.repaired and parsed.dropped_evidence == 0


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + json.dumps(GOOD) + "\n```",
        "```\n" + json.dumps(GOOD) + "\n```\nAnything else?",
        "Sure! Here is the profile you asked for:\n" + json.dumps(GOOD, indent=2),
        json.dumps(GOOD) + "\n\nNote: I hope this {helps",
        json.dumps(GOOD)[:-1] + ",}",  # trailing comma
    ],
    ids=["fenced", "fenced-no-lang", "leading-prose", "trailing-garbage", "trailing-comma"],
)
def test_wrapped_json_is_found_and_flagged_repaired(text: str) -> None:
    parsed = parse_profile(text, HISTORY)
    assert parsed.profile.summary == GOOD["summary"]
    assert parsed.profile.evidence_item_ids == ["B001", "B003"]
    assert parsed.repaired


@pytest.mark.parametrize(
    ("cut_after", "expected_prefs"),
    [
        ('"preferences": ["sourdough", "loose-le', ["sourdough", "loose-le"]),
        ('"preferences": ["sourdough"], "disl', ["sourdough"]),
        ('"preferences": ["sourdough"], "dislikes":', ["sourdough"]),
        ('"preferences": ["sourdough"],', ["sourdough"]),
    ],
    ids=["mid-string", "mid-key", "after-colon", "after-comma"],
)
def test_cut_off_at_max_tokens_keeps_what_was_written(
    cut_after: str, expected_prefs: list[str]
) -> None:
    text = '{"summary": "Bakes bread.", ' + cut_after
    parsed = parse_profile(text, HISTORY)
    assert parsed.repaired
    assert parsed.profile.summary == "Bakes bread."
    assert parsed.profile.preferences == expected_prefs


def test_cut_off_inside_the_summary_keeps_the_partial_summary() -> None:
    parsed = parse_profile('{"summary": "Bakes bread and dri', HISTORY)
    assert parsed.profile.summary == "Bakes bread and dri"


def test_invented_evidence_ids_are_dropped_and_counted() -> None:
    data = dict(GOOD, evidence_item_ids=["B001", "FAKE1", "B002", "B001", "B999"])
    parsed = parse_profile(json.dumps(data), HISTORY)
    assert parsed.profile.evidence_item_ids == ["B001", "B002"]
    assert parsed.dropped_evidence == 2


def test_repeated_phrases_are_kept_once() -> None:
    data = dict(GOOD, preferences=["Tea", "tea ", "", "coffee", "TEA"], dislikes=["x", "x"])
    parsed = parse_profile(json.dumps(data), HISTORY)
    assert parsed.profile.preferences == ["Tea", "coffee"]
    assert parsed.profile.dislikes == ["x"]


def test_extra_keys_are_ignored() -> None:
    parsed = parse_profile(json.dumps(dict(GOOD, mood="happy")), HISTORY)
    assert parsed.profile.summary == GOOD["summary"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty answer"),
        ("   \n ", "empty answer"),
        ("The user likes bread and tea.", "no JSON object"),
        ('{"name": "bread lover"}', "wrong schema: summary"),
        ('{"summary": {"text": "x"}}', "wrong schema: summary"),
        ('{"summary": "x", "preferences": "bread"}', "wrong schema: preferences"),
        ('{"summary": ""}', "wrong schema: summary"),
        ("[1, 2, 3]", "no JSON object"),
        ('{"summary": tru', "malformed JSON"),
    ],
    ids=[
        "empty",
        "blank",
        "not-json",
        "missing-summary",
        "summary-object",
        "list-as-string",
        "empty-summary",
        "array",
        "broken-literal",
    ],
)
def test_unusable_answers_raise_a_clear_parse_error(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_profile(text, HISTORY)


def test_extract_json_reports_no_repair_for_clean_objects() -> None:
    assert extract_json('{"a": [1, {"b": "}"}]}') == ({"a": [1, {"b": "}"}]}, False)


def test_braces_inside_strings_do_not_confuse_the_scanner() -> None:
    value, repaired = extract_json('note: {"summary": "likes {curly} \\"quotes\\""} bye')
    assert value == {"summary": 'likes {curly} "quotes"'} and repaired


def test_schema_for_constrained_decoding_is_closed_and_bounded() -> None:
    schema = profile_json_schema(3)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(Profile.model_fields)
    assert schema["properties"]["preferences"]["maxItems"] == 3
    assert schema["properties"]["summary"]["maxLength"] == 400
    assert schema["properties"]["evidence_item_ids"]["items"] == {"type": "string"}


def test_schema_can_make_evidence_ids_an_enum_of_the_listed_items() -> None:
    schema = profile_json_schema(3, summary_chars=100, evidence_ids=["B1", "B2", "B1"])
    assert schema["properties"]["evidence_item_ids"]["items"]["enum"] == ["B1", "B2"]
    assert schema["properties"]["summary"]["maxLength"] == 100
