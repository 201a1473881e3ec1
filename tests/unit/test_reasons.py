"""Reasons name the history items a recommendation follows from, from the data."""

from __future__ import annotations

import numpy as np
import pytest

from agent.data.schema import Dataset, Item, UserSequence
from agent.pipeline.reasons import Explainer

TITLES = {
    "k1": "Lodge Cast Iron Skillet",
    "k2": "Pyrex Measuring Cup",
    "k3": "Lodge Cast Iron Griddle",
    "k4": "OXO Salad Spinner",
    "k5": "Cuisinart Knife Set",
    "f1": "Lipton Green Tea",
}


@pytest.fixture()
def data() -> Dataset:
    items = {i: Item(i, "food" if i.startswith("f") else "kitchen", t) for i, t in TITLES.items()}
    users = [
        UserSequence("a", "train", ("k1", "k2", "k3")),  # k2 -> k3 twice: a transition
        UserSequence("b", "train", ("k2", "k3", "k5")),
        UserSequence("t1", "test", ("k1", "k2", "f1", "k3")),
    ]
    return Dataset("reasons", items, users)


def _vectors(data: Dataset) -> np.ndarray:
    # Skillet and griddle point the same way; the rest are orthogonal.
    rows = {"k1": [1, 0, 0, 0], "k3": [0.9, 0.1, 0, 0], "k2": [0, 1, 0, 0], "k4": [0, 0, 1, 0]}
    out = np.zeros((len(data.catalog) + 1, 4))
    for iid, dense in data.catalog.index.items():
        out[dense] = rows.get(iid, [0, 0, 0, 1])
    return out


def test_reasons_name_real_history_items(data: Dataset) -> None:
    user = data.split("test")[0]
    explainer = Explainer(data, _vectors(data))
    griddle, spinner = explainer.explain(user.history, ["k3", "k4"])
    # k2 -> k3 in two train rows comes first; the skillet is the text-nearest.
    assert [b.item_id for b in griddle.because] == ["k2", "k1"]
    assert griddle.because[0].transitions == 2
    assert griddle.similar == 1  # the skillet (the measuring cup is not similar)
    text = griddle.text("ranked #2 by sasrec-hybrid")
    assert text == (
        "follows your Pyrex Measuring Cup; bought together with your Lodge Cast Iron Skillet; "
        "similar to 1 kitchen item you bought; ranked #2 by sasrec-hybrid"
    )
    # Nothing in the history relates to the spinner: the reason says only who ranked it.
    assert spinner.because == [] and spinner.similar == 0
    assert spinner.text("ranked #1 by popularity") == "ranked #1 by popularity"
    assert all(b.item_id in user.history for e in (griddle, spinner) for b in e.because)


def test_embeddings_must_match_the_catalogue(data: Dataset) -> None:
    with pytest.raises(ValueError, match="rows"):
        Explainer(data, np.zeros((3, 4)))
