"""``recbridge data reslice``: new held-out users drawn from train rows, written and read back
in the shared format."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.data.reslice import reslice, write_shared
from agent.data.schema import Dataset, Item, UserSequence
from agent.data.shared_format import read_shared


def _data() -> Dataset:
    items = {f"f{i}": Item.read(f"f{i}", "food", f"Food &amp; {i}") for i in range(6)}
    items |= {f"k{i}": Item(f"k{i}", "kitchen", f"kitchen {i}") for i in range(6)}
    mixed = [
        UserSequence(f"m{i}", "train", ("f0", "k1", "f2", "k3", f"f{i % 6}")) for i in range(6)
    ]
    single = [UserSequence("s", "train", ("f0", "f1", "f2", "f3", "f4"))]
    short = [UserSequence("short", "train", ("f0", "k0", "f1"))]
    held = [
        UserSequence("v", "valid", ("f0", "k0", "f1", "k2")),
        UserSequence("t", "test", ("k1", "f1", "f3", "k4")),
    ]
    return Dataset("toy", items, [*mixed, *single, *short, *held])


def test_new_held_out_users_come_from_mixed_train_rows(tmp_path: Path) -> None:
    data = _data()
    new = reslice(data, valid=2, test=2, seed=3)
    valid, test, train = new.split("valid"), new.split("test"), new.split("train")
    assert len(valid) == len(test) == 2
    held = {u.user_id for u in valid + test}
    assert held <= {f"m{i}" for i in range(6)}  # spanning both domains, long enough
    assert not held & {u.user_id for u in train}  # no row both trained on and held out
    assert "v" not in {u.user_id for u in new.users} and "t" not in {u.user_id for u in new.users}
    assert {u.user_id for u in train} == {"m0", "m1", "m2", "m3", "m4", "m5", "s", "short"} - held
    # the row is kept whole: its last item is the target
    original = {u.user_id: u.items for u in data.users}
    assert all(u.items == original[u.user_id] for u in valid + test)
    assert reslice(data, valid=2, test=2, seed=3).users == new.users  # seeded
    back = read_shared(write_shared(new, tmp_path / "out"))
    assert [(u.user_id, u.split, u.items) for u in back.users] == [
        (u.user_id, u.split, u.items) for u in new.users
    ]
    # The source's title is written back, so the items read back the same (decoded once).
    assert back.items["f1"] == data.items["f1"]
    assert back.items["f1"].title == "Food & 1" and back.items["f1"].source_title == "Food &amp; 1"


def test_too_few_rows_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="fewer than the 10 held-out users"):
        reslice(_data(), valid=5, test=5, seed=0)
