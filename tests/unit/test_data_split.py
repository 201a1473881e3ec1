"""Histories, k-core and leave-one-out on hand-checked data."""

from __future__ import annotations

import pytest

from agent.data.schema import DataError, Item, LoadReport
from agent.data.split import Interaction, build_dataset, build_histories, k_core, leave_one_out


def _events(*rows: tuple[str, str, float]) -> list[Interaction]:
    return [Interaction(user_id=u, item_id=i, timestamp=t) for u, i, t in rows]


def test_histories_sort_by_time_and_keep_input_order_on_ties() -> None:
    report = LoadReport()
    histories = build_histories(
        _events(("u2", "c", 5), ("u1", "b", 2), ("u1", "a", 1), ("u1", "z", 2), ("u1", "b", 2)),
        report,
    )
    assert list(histories) == ["u2", "u1"]
    # b and z tie at 2: input order; the exact repeat of (u1, b, 2) is one interaction.
    assert histories["u1"] == ["a", "b", "z"]
    assert report.notes == ["1 repeated interactions (same user, item and time) counted once"]


def test_same_item_at_different_times_is_kept() -> None:
    histories = build_histories(_events(("u", "a", 1), ("u", "a", 3), ("u", "b", 2)))
    assert histories["u"] == ["a", "b", "a"]


def test_k_core_iterates_until_stable() -> None:
    histories = {
        "u1": ["k1", "f2", "f1", "k2"],
        "u2": ["k1", "f1", "f3"],
        "u3": ["f2", "k3"],
    }
    kept, result = k_core(histories, 2)
    # Round 1 drops k2, f3, k3 (1 interaction each), leaving u3 with [f2]; round 2 drops
    # u3, which leaves f2 with one interaction; round 3 drops f2; then nothing changes.
    assert kept == {"u1": ["k1", "f1"], "u2": ["k1", "f1"]}
    assert result.rounds == 3
    assert (result.users_removed, result.items_removed, result.interactions_removed) == (1, 4, 5)


def test_k_core_counts_interactions_not_users() -> None:
    kept, _ = k_core({"u1": ["a", "a", "b"], "u2": ["a", "b", "c"]}, 2)
    assert kept == {"u1": ["a", "a", "b"], "u2": ["a", "b"]}


@pytest.mark.parametrize("k", [0, 1])
def test_k_core_below_two_changes_nothing(k: int) -> None:
    histories = {"u": ["a"]}
    kept, result = k_core(histories, k)
    assert kept == histories
    assert result.rounds == 0


def test_k_core_can_empty_everything() -> None:
    kept, result = k_core({"u1": ["a", "b"], "u2": ["c", "d"]}, 2)
    assert kept == {}
    assert result.users_removed == 2


def test_leave_one_out_rows() -> None:
    rows, short = leave_one_out({"u1": ["a", "b", "c", "d"], "u2": ["x", "y"], "u3": ["p"]})
    assert short == 2
    by_key = {(r.split, r.user_id): r for r in rows}
    assert set(by_key) == {
        ("train", "u1"),
        ("valid", "u1"),
        ("test", "u1"),
        ("train", "u2"),
        ("train", "u3"),
    }
    assert by_key["train", "u1"].items == ("a", "b")
    assert by_key["valid", "u1"].history == ("a", "b")
    assert by_key["valid", "u1"].target == "c"
    assert by_key["test", "u1"].history == ("a", "b", "c")
    assert by_key["test", "u1"].target == "d"
    assert by_key["train", "u2"].items == ("x", "y")
    # All train rows first, then valid, then test, as in the shared files.
    assert [r.split for r in rows] == ["train", "train", "train", "valid", "test"]


def test_leave_one_out_three_items_is_the_minimum() -> None:
    rows, short = leave_one_out({"u": ["a", "b", "c"]})
    assert short == 0
    assert [(r.split, r.items) for r in rows] == [
        ("train", ("a",)),
        ("valid", ("a", "b")),
        ("test", ("a", "b", "c")),
    ]


def _items(*ids: str) -> dict[str, Item]:
    return {i: Item(item_id=i, domain="d", title=i.upper()) for i in ids}


def test_build_dataset_keeps_only_used_items_and_notes_why() -> None:
    report = LoadReport()
    data = build_dataset(
        "toy",
        _items("a", "b", "c", "unused"),
        _events(("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1)),
        k=0,
        report=report,
        source="toy.csv",
    )
    assert list(data.items) == ["a", "b", "c"]
    assert len(data.split("test")) == 1
    assert report.notes == [
        "1 users with fewer than 3 interactions: train row only",
        "1 items without kept interactions left out",
    ]


def test_build_dataset_empty_after_k_core_is_an_error() -> None:
    with pytest.raises(DataError, match=r"toy\.csv: no users left after the 5-core filter"):
        build_dataset(
            "toy",
            _items("a"),
            _events(("u", "a", 1)),
            k=5,
            report=LoadReport(),
            source="toy.csv",
        )
