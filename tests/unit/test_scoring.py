"""Batch scoring I/O with the real popularity model on the slice, and crafted bad lines."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE
from agent.models.popularity import PopularityRecommender
from agent.scoring import score_file


def _strict_json(line: str) -> Any:
    def reject(const: str) -> None:
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(line, parse_constant=reject)


def _run(model: Any, tmp_path: Path, lines: list[bytes], batch_size: int = 256) -> list[Any]:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    score_file(model, src, dst, batch_size=batch_size, progress=False)
    return [_strict_json(line) for line in dst.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def pop(slice_data: Dataset, settings: Settings) -> PopularityRecommender:
    return PopularityRecommender(slice_data, settings)


@pytest.fixture()
def counts(slice_data: Dataset) -> Counter[str]:
    c: Counter[str] = Counter()
    for u in slice_data.iter_split("train"):
        c.update(u.history)
    return c


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_good_and_bad_lines(
    pop: PopularityRecommender, counts: Counter[str], tmp_path: Path
) -> None:
    popular = [i for i, _ in counts.most_common(3)]
    lines = [
        _line({"user_id": "a", "history": popular[:1], "candidates": popular}),
        b"{not json",
        b"[1, 2]",
        _line({"history": [], "candidates": []}),  # user_id missing
        _line({"user_id": "b", "history": "x", "candidates": []}),  # wrong type
        _line({"user_id": "c", "history": []}),  # candidates missing
        _line({"user_id": True, "history": [], "candidates": []}),  # bool is not an id
        b"",  # blank: skipped, no output
        b"\xff\xfe bad utf-8",
        _line({"user_id": 7, "history": ["NOPE", popular[0]], "candidates": ["X1", popular[1]]}),
        _line({"user_id": "e", "history": [], "candidates": [], "extra": 1}),
    ]
    out = _run(pop, tmp_path, lines)
    assert len(out) == 10  # one per non-blank line, in order
    assert out[0] == {"user_id": "a", "scores": [float(counts[i]) for i in popular]}
    assert out[1]["line"] == 2 and "malformed JSON" in out[1]["error"]
    assert out[2]["line"] == 3 and "JSON object" in out[2]["error"]
    assert out[3] == {"line": 4, "error": "user_id: missing"}
    assert out[4]["user_id"] == "b" and "history" in out[4]["error"]
    assert out[5]["user_id"] == "c" and "candidates" in out[5]["error"]
    assert out[6]["line"] == 7 and "user_id" in out[6]["error"]
    assert out[7]["line"] == 9 and "UTF-8" in out[7]["error"]
    assert out[8] == {
        "user_id": 7,
        "scores": [UNKNOWN_ITEM_SCORE, float(counts[popular[1]])],
        "unknown_candidates": ["X1"],
        "unknown_history": ["NOPE"],
    }
    assert out[9] == {"user_id": "e", "scores": []}


def test_batching_does_not_change_output(pop: PopularityRecommender, tmp_path: Path) -> None:
    ids = list(pop.data.items)[:30]
    lines = []
    for i in range(25):
        lines.append(_line({"user_id": f"u{i}", "history": ids[:i], "candidates": ids[i:]}))
        if i % 4 == 0:
            lines.append(b"oops")
    big = _run(pop, tmp_path, lines, batch_size=256)
    small = _run(pop, tmp_path, lines, batch_size=2)
    assert big == small
    assert [r.get("user_id") for r in big if "error" not in r] == [f"u{i}" for i in range(25)]


class FlakyModel(PopularityRecommender):
    """Test double over the real popularity model: fails on one item, NaN on another."""

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        ids = list(self.data.items)
        if any(ids[0] in c for c in candidates):
            raise RuntimeError("boom")
        out = super().score(histories, candidates)
        return [
            np.where(np.array([x == ids[1] for x in c]), np.nan, s) if len(c) else s
            for c, s in zip(candidates, out, strict=True)
        ]


def test_model_failure_is_isolated_to_its_line(
    slice_data: Dataset, settings: Settings, tmp_path: Path
) -> None:
    model = FlakyModel(slice_data, settings)
    ids = list(slice_data.items)
    lines = [
        _line({"user_id": "ok1", "history": [], "candidates": [ids[2]]}),
        _line({"user_id": "bad", "history": [], "candidates": [ids[0], ids[2]]}),
        _line({"user_id": "nan", "history": [], "candidates": [ids[1], ids[2]]}),
    ]
    out = _run(model, tmp_path, lines)
    assert "scores" in out[0]
    assert out[1]["user_id"] == "bad" and "boom" in out[1]["error"] and out[1]["line"] == 2
    assert out[2]["scores"][0] == UNKNOWN_ITEM_SCORE  # NaN written as the lowest score


def test_missing_input_raises(pop: PopularityRecommender, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        score_file(pop, tmp_path / "absent.jsonl", tmp_path / "out.jsonl", progress=False)
