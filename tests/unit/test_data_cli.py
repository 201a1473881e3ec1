"""``recbridge data stats`` and ``recbridge data validate`` through the real CLI app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _shared(folder: Path, sequences: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        {"item_id": "a", "domain": "food", "title": "A"},
        {"item_id": "b", "domain": "kitchen", "title": "B"},
    ]
    (folder / "items.jsonl").write_text(
        "".join(json.dumps(i) + "\n" for i in items), encoding="utf-8"
    )
    (folder / "sequences.jsonl").write_text("".join(s + "\n" for s in sequences), encoding="utf-8")
    return folder


GOOD = '{"user_id": "u1", "split": "train", "items": ["a", "b"]}'
UNKNOWN = '{"user_id": "u2", "split": "train", "items": ["zz"]}'


def test_stats_tables_on_the_slice(slice_dir: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(slice_dir)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{slice_dir.name} (shared)" in out
    for title in ("Per domain", "Per split", "food", "kitchen", "mixed"):
        assert title in out
    assert "680" in out  # users: 600 train + 40 valid + 40 test


def test_stats_json_on_the_slice(slice_dir: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(slice_dir), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["format"] == "shared"
    assert stats["users"] == 680
    assert {s: v["rows"] for s, v in stats["splits"].items()} == {
        "train": 600,
        "valid": 40,
        "test": 40,
    }


def test_stats_on_a_table_folder_with_k_core(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text(
        "item_id,domain,title\na,food,A\nb,kitchen,B\nc,food,C\nz,food,Z\n", encoding="utf-8"
    )
    events = ["user_id,item_id,timestamp"]
    events += [f"{u},{i},{t}" for u in ("u1", "u2") for t, i in enumerate("abc")]
    events.append("u3,z,1")
    (tmp_path / "interactions.csv").write_text("\n".join(events) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "stats", str(tmp_path), "--k-core", "2", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["format"], stats["users"], stats["items"]) == ("table", 2, 3)
    assert stats["splits"]["test"]["targets_per_domain"] == {"food": 2, "kitchen": 0}
    assert stats["notes"][0] == "2-core: removed 1 users, 1 items, 1 interactions (1 rounds)"


def test_bad_file_is_one_error_and_exit_2(tmp_path: Path) -> None:
    folder = _shared(tmp_path, [GOOD, UNKNOWN])
    result = runner.invoke(app, ["data", "stats", str(folder)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.stdout == ""
    # Exactly one line, unwrapped whatever the terminal width.
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "sequences.jsonl, line 2, field 'items': unknown item 'zz'" in lines[0]


def test_missing_path_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "data path not found" in _flat(result.output)


def test_bad_format_option_is_exit_2(tmp_path: Path) -> None:
    folder = _shared(tmp_path, [GOOD])
    result = runner.invoke(app, ["data", "stats", str(folder), "--format", "excel"])
    assert result.exit_code == 2
    assert "data.format" in _flat(result.output)


def test_validate_ok(tmp_path: Path) -> None:
    folder = _shared(tmp_path, [GOOD])
    result = runner.invoke(app, ["data", "validate", str(folder)])
    assert result.exit_code == 0, result.output
    assert _flat(result.stdout).startswith(f"OK {folder} (shared): 2 items, 1 users")


def test_validate_strict_reports_the_first_error(tmp_path: Path) -> None:
    folder = _shared(tmp_path, [GOOD, UNKNOWN, "{broken"])
    result = runner.invoke(app, ["data", "validate", str(folder)])
    assert result.exit_code == 2
    assert "line 2" in _flat(result.stderr)
    assert "line 3" not in _flat(result.stderr)


@pytest.mark.parametrize("command", ["validate", "stats"])
def test_lenient_counts_skips(tmp_path: Path, command: str) -> None:
    folder = _shared(tmp_path, [GOOD, UNKNOWN, "{broken"])
    result = runner.invoke(app, ["data", command, str(folder), "--lenient"])
    rows = [" ".join(line.replace("│", " ").split()) for line in result.stdout.splitlines()]
    assert "skipped: bad sequence (items) 1 sequences.jsonl:2" in rows
    assert "skipped: malformed JSON line 1 sequences.jsonl:3" in rows
    out = _flat(result.stdout)
    if command == "validate":
        assert result.exit_code == 1
        assert "loaded with 2 bad records skipped" in out
    else:
        assert result.exit_code == 0
