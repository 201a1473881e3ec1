"""Data set statistics on a hand-checked toy set and on the real-data slice."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from agent.data.schema import Dataset, Item, Split, UserSequence
from agent.data.stats import LengthStats, compute_stats

# Leave-one-out of u1 = k1 f2 f1 k2, u2 = k1 f1 f3; u3 = f2 k3 is too short (train only).
ROWS: list[tuple[Split, str, tuple[str, ...]]] = [
    ("train", "u1", ("k1", "f2")),
    ("train", "u2", ("k1",)),
    ("train", "u3", ("f2", "k3")),
    ("valid", "u1", ("k1", "f2", "f1")),
    ("valid", "u2", ("k1", "f1")),
    ("test", "u1", ("k1", "f2", "f1", "k2")),
    ("test", "u2", ("k1", "f1", "f3")),
]


@pytest.fixture()
def toy() -> Dataset:
    items = {
        i: Item(item_id=i, domain="food" if i[0] == "f" else "kitchen", title=i)
        for i in ("f1", "f2", "f3", "k1", "k2", "k3")
    }
    users = [UserSequence(user_id=u, split=s, items=seq) for s, u, seq in ROWS]
    return Dataset(name="toy", items=items, users=users)


def test_overall_numbers(toy: Dataset) -> None:
    stats = compute_stats(toy)
    assert stats.domains == ["food", "kitchen"]
    # Full sequences: u1 4 (test row), u2 3 (test row), u3 2 (train row).
    assert (stats.users, stats.items, stats.interactions) == (3, 6, 9)
    assert stats.items_per_domain == {"food": 3, "kitchen": 3}
    assert stats.users_per_domain == {"food": 3, "kitchen": 3}
    assert stats.interactions_per_domain == {"food": 5, "kitchen": 4}
    assert stats.users_by_domain_count == {2: 3}
    assert stats.multi_domain_users == 3
    assert stats.overlap == {"food & kitchen": 3}
    # [2, 3, 4]: p90 by linear interpolation = 3 + 0.8 * (4 - 3)
    assert stats.length == LengthStats(count=3, min=2, median=3.0, mean=3.0, p90=3.8, max=4)
    # Items of one domain per user: food u1 2, u2 2, u3 1; kitchen u1 2, u2 1, u3 1.
    assert stats.length_per_domain["food"] == LengthStats.of([2, 2, 1])
    assert stats.length_per_domain["kitchen"] == LengthStats.of([2, 1, 1])
    assert stats.length_per_domain["kitchen"].mean == pytest.approx(4 / 3, abs=1e-3)


def test_split_numbers(toy: Dataset) -> None:
    stats = compute_stats(toy)
    train, valid, test = (stats.splits[s] for s in ("train", "valid", "test"))
    assert (train.rows, train.interactions) == (3, 5)
    assert train.rows_by_mix == {"kitchen": 1, "mixed": 2}
    assert train.users_per_domain == {"food": 2, "kitchen": 3}
    assert train.items_per_domain == {"food": 1, "kitchen": 2}
    assert train.interactions_per_domain == {"food": 2, "kitchen": 3}
    assert train.length_by_mix["mixed"] == LengthStats.of([2, 2])
    assert train.targets_per_domain == {}
    assert valid.targets_per_domain == {"food": 2, "kitchen": 0}
    assert test.targets_per_domain == {"food": 1, "kitchen": 1}
    assert (valid.rows, valid.interactions, test.rows, test.interactions) == (2, 5, 2, 7)


def test_items_never_in_train(toy: Dataset) -> None:
    stats = compute_stats(toy)
    # Train rows hold k1, f2, k3; f1, f3, k2 only appear in valid/test rows.
    assert stats.items_not_in_train == 3
    assert stats.targets_not_in_train == {"valid": 2, "test": 2}


def test_json_round_trip(toy: Dataset) -> None:
    toy.report.skip("bad item (title)", "items.jsonl:4")
    toy.report.note("a note")
    out = json.loads(json.dumps(compute_stats(toy).to_dict()))
    assert out["skipped"] == {"bad item (title)": 1}
    assert out["notes"] == ["a note"]
    assert out["splits"]["test"]["length"]["max"] == 4


def test_length_stats_of_nothing() -> None:
    assert LengthStats.of([]).count == 0


def test_real_slice(slice_data: Dataset, slice_dir: Path) -> None:
    """Numbers of the real-data slice, counted again straight from its files."""
    domain = {}
    for line in (slice_dir / "items.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        domain[row["item_id"]] = row["domain"]
    rows = [
        json.loads(line)
        for line in (slice_dir / "sequences.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    stats = compute_stats(slice_data)
    assert stats.users == len(rows) == 680
    assert stats.items == len(domain)
    assert stats.interactions == sum(len(r["items"]) for r in rows)
    assert stats.items_per_domain == dict(sorted(Counter(domain.values()).items()))
    for split, count in (("train", 600), ("valid", 40), ("test", 40)):
        assert stats.splits[split].rows == count
    test_targets = Counter(domain[r["items"][-1]] for r in rows if r["split"] == "test")
    assert stats.splits["test"].targets_per_domain == {d: test_targets[d] for d in stats.domains}
    in_train = {i for r in rows if r["split"] == "train" for i in r["items"]}
    assert stats.items_not_in_train == len(set(domain) - in_train)
    mixed = sum(1 for r in rows if len({domain[i] for i in r["items"]}) > 1)
    assert stats.multi_domain_users == mixed
    # As in the full data: every valid and test user touches both domains.
    assert stats.splits["valid"].rows_by_mix == {"mixed": 40}
    assert stats.splits["test"].rows_by_mix == {"mixed": 40}
    assert stats.length.min >= 5
