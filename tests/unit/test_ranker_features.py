"""The learned ranker's features and groups on hand-made data: counts from train rows only (a
leakage test), the holdout counts of training groups, well-formed LambdaRank groups, the valid
metric, and a ranker that learns a planted signal and serves it as a permutation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from agent.data.schema import Dataset, Item, UserSequence
from agent.rerank.base import RerankRequest
from agent.rerank.features import BASE_FEATURES, FeatureBuilder, ItemStats
from agent.rerank.ranker import (
    LearnedRanker,
    RankerCard,
    RankerError,
    RankerGroups,
    load_booster,
    make_groups,
    read_card,
    save_ranker,
)
from finetune.build import holdout_dataset
from finetune.ranker import ndcg10

COL = {name: i for i, name in enumerate(BASE_FEATURES)}


def _data(held_out: list[UserSequence] | None = None) -> Dataset:
    items = {f"f{i}": Item(f"f{i}", "food", f"food {i}") for i in range(8)}
    items |= {f"k{i}": Item(f"k{i}", "kitchen", f"kitchen {i}") for i in range(8)}
    train = [
        UserSequence("a", "train", ("f0", "f1", "f2", "k0")),
        UserSequence("b", "train", ("f0", "f1", "k1")),
        UserSequence("c", "train", ("f1", "f2", "f3")),
    ]
    rest = held_out or [
        UserSequence("v1", "valid", ("f0", "f1", "k0")),
        UserSequence("t1", "test", ("f2", "f1", "f3")),
    ]
    return Dataset("toy", items, [*train, *rest])


def _vectors(data: Dataset, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(len(data.catalog) + 1, 8)).astype(np.float32)
    out[0] = 0
    return out


def test_counts_come_from_train_rows() -> None:
    data = _data()
    stats = ItemStats.from_train(data)
    idx = data.catalog.index
    assert stats.rows == 3
    assert stats.count[idx["f1"]] == 3 and stats.count[idx["k0"]] == 1
    assert stats.transitions[idx["f0"], idx["f1"]] == 2  # rows a and b
    assert stats.transitions[idx["f1"], idx["f0"]] == 0  # direction kept
    assert stats.covisit[idx["f0"], idx["k0"]] == stats.covisit[idx["k0"], idx["f0"]] == 1
    # last three items of each row
    assert stats.recent_count[idx["f0"]] == 1 and stats.recent_count[idx["f3"]] == 1


def test_held_out_rows_never_shape_a_feature() -> None:
    """Changing every valid/test row (targets included) leaves every feature as it was."""
    base = _data()
    other = _data(
        [
            UserSequence("v1", "valid", ("k3", "k4", "k5", "k6", "f7")),
            UserSequence("t1", "test", ("f7", "f6", "f5", "k7")),
        ]
    )
    vectors = _vectors(base)
    history, cands, scores = ["f0", "f1"], ["f2", "f3", "f4", "k0"], [3.0, 2.0, 1.0, 0.5]
    a = FeatureBuilder(base, ItemStats.from_train(base), vectors).group(history, cands, scores)
    b = FeatureBuilder(other, ItemStats.from_train(other), vectors).group(history, cands, scores)
    np.testing.assert_array_equal(a, b)


def test_training_groups_read_holdout_counts() -> None:
    """For a group cut from a train row, the label's own transition is not counted."""
    data = _data()
    holdout = holdout_dataset(data)
    full = FeatureBuilder(data, ItemStats.from_train(data), _vectors(data))
    held = FeatureBuilder(holdout, ItemStats.from_train(holdout), _vectors(data))
    # row c = f1 f2 f3: the group's history is f1 f2 and its label f3
    args = (["f1", "f2"], ["f3", "f4"], [1.0, 0.0])
    assert full.group(*args)[0, COL["trans_last1"]] > 0  # f2 -> f3 counted in the full rows
    assert held.group(*args)[0, COL["trans_last1"]] == 0  # ... and not in the holdout rows
    assert held.group(*args)[0, COL["log_pop"]] == 0  # f3 only ever appears as c's last item


def test_feature_values_on_a_known_list() -> None:
    data = _data()
    builder = FeatureBuilder(data, ItemStats.from_train(data), _vectors(data))
    feats = builder.group(["f0", "f1"], ["k1", "f2", "k0"], [0.5, 2.0, 1.0])
    assert feats.shape == (3, len(BASE_FEATURES))
    np.testing.assert_array_equal(feats[:, COL["retr_rank"]], [2, 0, 1])
    np.testing.assert_allclose(feats[:, COL["retr_gap_top"]], [-1.5, 0.0, -1.0])
    np.testing.assert_array_equal(feats[:, COL["same_domain_last"]], [0, 1, 0])
    np.testing.assert_allclose(
        feats[:, COL["trans_last1"]], np.log1p([1, 2, 0])
    )  # f1->k1 (b); f1->f2 (a, c)
    np.testing.assert_array_equal(feats[:, COL["unseen"]], [0, 0, 0])
    np.testing.assert_array_equal(feats[:, COL["cold"]], [1, 1, 1])
    # an empty history gives zeros where the history is read, and no error
    empty = builder.group([], ["k1"], [1.0])
    assert empty[0, COL["cos_last1"]] == 0 and empty[0, COL["log_hist_len"]] == 0


def test_groups_are_well_formed() -> None:
    data = _data()
    builder = FeatureBuilder(data, ItemStats.from_train(data), _vectors(data))
    groups = make_groups(
        builder,
        ["u1", "u2"],
        [["f0"], ["f1", "f2"]],
        [["f1", "f2", "f3"], ["f3", "f4"]],
        [[3.0, 2.0, 1.0], [2.0, 1.0]],
        ["f2", "f3"],
    )
    assert groups.sizes.tolist() == [3, 2] and groups.features.shape == (5, len(builder.names))
    assert groups.labels.tolist() == [0, 1, 0, 1, 0]
    np.testing.assert_array_equal(groups.offsets, [0, 3, 5])
    with pytest.raises(ValueError, match="do not add up"):
        RankerGroups(groups.features, groups.labels, np.asarray([3, 3]))


def test_valid_ndcg_counts_users_without_a_group() -> None:
    labels = np.asarray([0, 1, 0, 0, 0, 0], dtype=float)
    groups = RankerGroups(np.zeros((6, 1), np.float32), labels, np.asarray([3, 3]))
    # group 1: label second by score; group 2: no label (counts 0); 4 users in all
    scores = np.asarray([3.0, 2.0, 1.0, 1.0, 1.0, 1.0])
    assert ndcg10(groups, scores, users=4) == pytest.approx((1 / np.log2(3)) / 4)
    # ties keep the retrieval order
    assert ndcg10(groups, np.zeros(6), users=1) == pytest.approx(1 / np.log2(3))


def _planted(n_groups: int, seed: int) -> tuple[RankerGroups, list[str]]:
    """Groups where the label is the candidate with the largest feature 5 (cos_last1)."""
    rng = np.random.default_rng(seed)
    names = list(BASE_FEATURES)
    feats = rng.normal(size=(n_groups * 10, len(names))).astype(np.float32)
    labels = np.zeros(n_groups * 10)
    for g in range(n_groups):
        block = feats[g * 10 : (g + 1) * 10, COL["cos_last1"]]
        labels[g * 10 + int(np.argmax(block))] = 1
    return RankerGroups(feats, labels, np.full(n_groups, 10)), names


def test_ranker_learns_a_planted_signal_and_serves_a_permutation(tmp_path: Path) -> None:
    import lightgbm as lgb

    train, names = _planted(300, 1)
    booster = lgb.train(
        {"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(train.features, train.labels, group=train.sizes),
        num_boost_round=30,
    )
    card = RankerCard(features=names, params={}, best_iteration=30, top_n=10, retriever="x")
    folder = save_ranker(tmp_path / "r", booster, card)
    assert read_card(folder).features == names
    data = _data()
    vectors = _vectors(data, 3)
    builder = FeatureBuilder(data, ItemStats.from_train(data), vectors)
    ranker = LearnedRanker(None, builder, load_booster(folder), read_card(folder), folder=folder)
    cands = ["f2", "f3", "f4", "f5", "f6"]
    request = RerankRequest.from_ids(data, "u", ["f0", "f1"], cands, scores=[0.0] * 5)
    result = asyncio.run(ranker.arerank(request))
    assert sorted(result.ranking) == sorted(cands) and not result.fallback
    # the planted signal: the candidate closest to the last history item comes first
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    idx = data.catalog.index
    cos = {c: float(unit[idx[c]] @ unit[idx["f1"]]) for c in cands}
    assert result.ranking[0] == max(cands, key=cos.__getitem__)


def test_a_ranker_with_other_features_is_refused(tmp_path: Path) -> None:
    data = _data()
    builder = FeatureBuilder(data, ItemStats.from_train(data), _vectors(data))
    card = RankerCard(features=["x"], params={}, best_iteration=1, top_n=5, retriever="x")
    with pytest.raises(RankerError, match="trained on features"):
        LearnedRanker(None, builder, object(), card)
    with pytest.raises(RankerError, match="no trained ranker"):
        read_card(tmp_path)
    (tmp_path / "model.txt").write_text("x")
    (tmp_path / "card.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(RankerError, match="not a ranker card"):
        read_card(tmp_path)


def test_unknown_candidates_do_not_break_features() -> None:
    data = _data()
    builder = FeatureBuilder(data, ItemStats.from_train(data), _vectors(data))
    feats = builder.group(["f0", "gone"], ["f1", "nope"], [1.0, 0.0])
    assert feats.shape == (2, len(BASE_FEATURES)) and np.isfinite(feats).all()
    assert feats[1, COL["unseen"]] == 1
