"""The prompt template registry: files with front matter, strict rendering, content hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_settings
from agent.data.schema import Item
from agent.prompts import PromptError, load_template

ITEMS = [Item("B1", "food", "Organic Green Tea, 100 bags"), Item("B2", "food", "Sea Salt")]
HEADER = "{#---\nname: demo\nversion: 2\n---#}\n"


def test_every_profile_template_loads_with_name_version_and_hash() -> None:
    files = load_settings().profile.templates.model_dump().values()
    for file in files:
        ref = load_template(file).ref
        assert ref.file == file and ref.name and ref.version
        assert len(ref.sha256) == 64


def test_group_template_renders_system_then_user_messages() -> None:
    messages = load_template("profile_group.j2").render(domain="food", items=ITEMS)
    assert [m.role for m in messages] == ["system", "user"]
    assert "50 words" in messages[0].content
    assert "- Organic Green Tea, 100 bags\n- Sea Salt" in messages[1].content
    assert "food" in messages[1].content
    assert "{%" not in messages[1].content and "---" not in messages[1].content


def test_domain_template_lists_item_ids_for_evidence() -> None:
    messages = load_template("profile_domain.j2").render(
        domain="food", summaries=["Likes tea."], items=ITEMS
    )
    assert "- B1: Organic Green Tea, 100 bags" in messages[-1].content
    assert "evidence_item_ids" in messages[-1].content


def test_missing_variable_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(PromptError, match="items"):
        load_template("profile_group.j2").render(domain="food")


def test_hash_changes_with_the_content_and_the_file_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "demo.j2"
    path.write_text(HEADER + "{% block user %}Hello {{ name }}{% endblock %}\n")
    first = load_template("demo.j2", tmp_path)
    assert first.ref.name == "demo" and first.ref.version == "2"
    assert [m.content for m in first.render(name="Ann")] == ["Hello Ann"]
    path.write_text(HEADER + "{% block user %}Hi {{ name }}!{% endblock %}\n")
    second = load_template("demo.j2", tmp_path)
    assert second.ref.sha256 != first.ref.sha256
    assert second.render(name="Ann")[0].content == "Hi Ann!"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{% block user %}x{% endblock %}", "front matter"),
        ("{#---\nversion: 1\n---#}\n{% block user %}x{% endblock %}", "bad front matter"),
        (HEADER + "{% block system %}x{% endblock %}", "block user"),
        (HEADER + "{% block user %}{{ x {% endblock %}", "demo.j2"),
    ],
    ids=["no-front-matter", "no-name", "no-user-block", "syntax"],
)
def test_broken_templates_are_named_in_the_error(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "demo.j2").write_text(body)
    with pytest.raises(PromptError, match=message):
        load_template("demo.j2", tmp_path)


def test_missing_template_file_is_a_prompt_error(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="not found"):
        load_template("nope.j2", tmp_path)


def test_templates_are_switchable_by_config() -> None:
    settings = load_settings(set_items=["profile.templates.group=my_group.j2"])
    assert settings.profile.templates.group == "my_group.j2"
    assert settings.profile.templates.domain == "profile_domain.j2"
