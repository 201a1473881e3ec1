"""Any dataset in the shared format works without a code change: a small two-domain folder
that is not food-kitchen, with a user id repeated across held-out rows (one row per target
domain) and item categories, read, rendered and scored by every model through the CLI."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.data.schema import DataError
from agent.data.shared_format import read_shared
from agent.items.text import item_text
from agent.models.registry import RECOMMENDERS

DOMAINS = {
    "books": ["novel", "atlas", "cookbook", "poems", "biography", "thriller"],
    "games": ["chess set", "puzzle", "card game", "dice", "board game", "kite"],
}


def _items() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for domain, kinds in DOMAINS.items():
        for n in range(24):
            kind = kinds[n % len(kinds)]
            rows.append(
                {
                    "item_id": f"{domain[0]}{n}",
                    "domain": domain,
                    "title": f"{kind.title()} number {n}",
                    # a plain string on some items, a list on others: both are allowed
                    "categories": kind if n % 2 else [domain.title(), kind],
                }
            )
    return rows


def _sequences(rng: random.Random) -> list[dict[str, object]]:
    books = [f"b{n}" for n in range(24)]
    games = [f"g{n}" for n in range(24)]
    rows: list[dict[str, object]] = []
    for u in range(60):
        # users walk through neighbouring items, so there is a pattern to learn
        start = rng.randrange(24)
        seq = [books[(start + i) % 24] if i % 3 else games[(start + i) % 24] for i in range(7)]
        rows.append({"user_id": f"u{u}", "split": "train", "items": seq[:5]})
        if u % 3 == 0:  # one held-out row per target domain: the user id repeats
            for split, cut in (("valid", 5), ("test", 6)):
                rows.append(
                    {"user_id": f"u{u}", "split": split, "items": [*seq[:cut], books[start]]}
                )
                rows.append(
                    {"user_id": f"u{u}", "split": split, "items": [*seq[:cut], games[start]]}
                )
        else:
            rows.append({"user_id": f"u{u}", "split": "valid", "items": seq[:6]})
            rows.append({"user_id": f"u{u}", "split": "test", "items": seq[:7]})
    return rows


def _write(
    folder: Path, items: Sequence[Mapping[str, object]], seqs: Sequence[Mapping[str, object]]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("items.jsonl", items), ("sequences.jsonl", seqs)):
        text = "\n".join(json.dumps(r) for r in rows) + "\n"
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("books-games"), _items(), _sequences(random.Random(0)))


def test_repeated_held_out_users_get_one_row_per_domain(other_dataset: Path) -> None:
    data = read_shared(other_dataset)
    valid = {u.user_id: u for u in data.split("valid")}
    assert len(valid) == len(data.split("valid")) == 60 + 20  # every row kept, none merged
    assert {"u0#books", "u0#games", "u1"} <= set(valid)
    assert data.domain_of(str(valid["u0#books"].target)) == "books"
    assert data.domain_of(str(valid["u0#games"].target)) == "games"
    assert {u.user_id for u in data.split("train")} >= {"u0", "u1"}  # train ids unchanged
    assert any("one row per target domain" in note for note in data.report.notes)


def test_a_repeat_in_the_same_target_domain_is_an_error(tmp_path: Path) -> None:
    seqs = [
        {"user_id": "a", "split": "train", "items": ["b1", "g1"]},
        {"user_id": "a", "split": "valid", "items": ["b1", "b2"]},
        {"user_id": "a", "split": "valid", "items": ["g1", "b3"]},
    ]
    with pytest.raises(DataError, match=r"line 3.*duplicate user 'a' in split valid with a "):
        read_shared(_write(tmp_path, _items(), seqs))


def test_item_text_uses_categories_when_present(other_dataset: Path) -> None:
    data = read_shared(other_dataset)
    assert "Categories: Books > novel" in item_text(data.items["b0"])
    assert "Categories: atlas" in item_text(data.items["b1"])
    plain = data.items["b0"]
    assert "Categories" not in item_text(replace(plain, categories=()))


def test_score_works_with_every_model(other_dataset: Path, tmp_path: Path) -> None:
    data = read_shared(other_dataset)
    user = data.split("test")[0]
    lines = [
        {"user_id": "x", "history": list(user.history), "candidates": ["b3", "b4", "g5", "zzz"]},
        {"user_id": "y", "history": ["g1", "g2", "b7"], "candidates": ["g3", "g9", "g11"]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    sets = {
        "work_dir": tmp_path / "work",
        "train.epochs": 1,
        "train.hidden": 16,
        "train.max_len": 10,
        "train.batch_size": 32,
        "methods.semantics.max_items": 0,  # SemaCDR's LLM views: none here, no LLM call
        "methods.llm_recg.fusion_epochs": 1,
        "methods.llm_recg.clusters": 3,
        "eval.bootstrap": 10,
    }
    base = [part for k, v in sets.items() for part in ("--set", f"{k}={v}")]
    runner = CliRunner()
    for model in sorted(RECOMMENDERS):
        out = tmp_path / f"{model}.jsonl"
        files = ["--input", str(src), "--output", str(out)]
        args = [*base, "score", "--data", str(other_dataset), "--model", model, "--train", *files]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{model}: {result.output}"
        rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert [r["user_id"] for r in rows] == ["x", "y"], model
        assert "error" not in rows[0] and "error" not in rows[1], (model, rows)
        first, second = rows[0]["scores"], rows[1]["scores"]
        assert len(first) == 4 and len(second) == 3, model
        assert all(math.isfinite(s) for s in first[:3] + second), (model, rows)
        assert first[3] == min(first), model  # the unknown candidate ranks last
