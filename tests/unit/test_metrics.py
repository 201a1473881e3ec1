"""Metrics checked by hand, tie-breaking, bootstrap, and the evaluator on the real slice."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import Recommender
from eval.evaluator import OVERALL, RankingEvaluator, make_valid_fn, select_users, valid_ndcg10
from eval.metrics import (
    bootstrap_intervals,
    metric_names,
    per_user_metrics,
    summarize,
    target_rank,
    tie_uniform,
)


class ConstantScorer(Recommender):
    """Test double: every candidate gets the same score (all ties)."""

    name = "constant"

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        return [np.zeros(len(c)) for c in candidates]


class OracleScorer(Recommender):
    """Test double that knows each user's target (from the data) and scores it highest."""

    name = "oracle"

    def __init__(self, data: Dataset, settings: Settings) -> None:
        super().__init__(data, settings)
        self.targets = {u.history: u.target for u in data.users if u.target}

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        return [
            np.array([1.0 if c == self.targets[tuple(h)] else 0.0 for c in cands])
            for h, cands in zip(histories, candidates, strict=True)
        ]


def test_rank_without_ties() -> None:
    scores = np.array([0.9, 0.5, 0.1, 0.7])
    assert target_rank(scores, 0, 0.5) == 0
    assert target_rank(scores, 3, 0.5) == 1
    assert target_rank(scores, 2, 0.99) == 3


def test_rank_ties_are_broken_by_the_draw() -> None:
    scores = np.array([1.0, 0.5, 0.5, 0.5])  # target at 2 ties with two others, one above
    assert target_rank(scores, 2, 0.0) == 1
    assert target_rank(scores, 2, 0.5) == 2
    assert target_rank(scores, 2, 0.999) == 3


def test_nan_scores_count_as_lowest() -> None:
    assert target_rank(np.array([np.nan, 0.1]), 1, 0.5) == 0
    assert target_rank(np.array([np.nan, 0.1]), 0, 0.5) == 1


def test_per_user_metrics_by_hand() -> None:
    names = metric_names([1, 5, 10])
    m = dict(zip(names, per_user_metrics(np.array([0, 2, 9, 10]), [1, 5, 10]).T, strict=True))
    np.testing.assert_allclose(m["hr@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(m["hr@5"], [1, 1, 0, 0])
    np.testing.assert_allclose(m["hr@10"], [1, 1, 1, 0])
    np.testing.assert_allclose(m["ndcg@1"], [1, 0, 0, 0])
    np.testing.assert_allclose(m["ndcg@5"], [1, 0.5, 0, 0])  # rank 2: 1/log2(4) = 0.5
    np.testing.assert_allclose(m["ndcg@10"], [1, 0.5, 1 / math.log2(11), 0])
    np.testing.assert_allclose(m["mrr"], [1, 1 / 3, 1 / 10, 1 / 11])


def test_constant_scorer_is_random_level() -> None:
    """1,000 tied candidates: the rank is uniform, so HR@10 ~ 0.01 and mean rank ~ 499.5."""
    scores = np.zeros(1000)
    ranks = np.array(
        [target_rank(scores, 0, tie_uniform(42, "test", f"u{i}")) for i in range(20000)]
    )
    hr10 = float((ranks < 10).mean())
    assert 0.0075 < hr10 < 0.0125  # binomial sd ~ 0.0007
    assert abs(ranks.mean() - 499.5) < 10
    assert ranks.min() == 0 and ranks.max() == 999


def test_tie_uniform_is_stable_and_in_range() -> None:
    u = tie_uniform(42, "test", "u1")
    assert u == tie_uniform(42, "test", "u1")
    assert 0.0 <= u < 1.0
    assert u != tie_uniform(43, "test", "u1")


def test_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((500, 2))
    values[:, 1] = 0.25  # constant column: a zero-width interval
    lo, hi = bootstrap_intervals(values, 300, np.random.default_rng(1))
    mean = values.mean(axis=0)
    assert lo[0] < mean[0] < hi[0]
    assert hi[0] - lo[0] < 0.1  # sd of the mean ~ 0.013
    assert lo[1] == hi[1] == 0.25
    lo2, hi2 = bootstrap_intervals(values, 300, np.random.default_rng(1))
    np.testing.assert_array_equal(lo, lo2)  # seeded: reproducible
    np.testing.assert_array_equal(hi, hi2)
    lo0, _ = bootstrap_intervals(values, 0, np.random.default_rng(1))
    assert np.isnan(lo0).all()


def test_summarize_keys_and_empty_group() -> None:
    out = summarize(np.array([0, 1]), [1, 5, 10], 20, np.random.default_rng(0))
    assert list(out) == metric_names([1, 5, 10])
    assert out["hr@1"].mean == 0.5
    assert math.isnan(
        summarize(np.array([], dtype=int), [10], 20, np.random.default_rng(0))["hr@10"].mean
    )


def test_evaluator_oracle_and_constant(slice_data: Dataset, settings: Settings) -> None:
    ev = RankingEvaluator(slice_data, settings, split="test", protocol="sampled-100")
    oracle = ev(OracleScorer(slice_data, settings))
    assert oracle.metrics[OVERALL]["hr@1"].mean == 1.0
    assert oracle.primary == 1.0 and oracle.primary_metric == "ndcg@10"
    assert set(oracle.groups) == {OVERALL, *slice_data.domains}
    assert sum(oracle.n_users_by_group[d] for d in slice_data.domains) == oracle.n_users == 40
    const = ev(ConstantScorer(slice_data, settings))
    assert 0 <= const.metrics[OVERALL]["hr@10"].mean <= 0.35  # ~10/101 expected
    assert len(set(const.ranks.tolist())) > 5  # ties spread, not all 0 or all last
    assert const.users_per_s > 0 and const.seconds >= 0
    lo, hi = const.metrics[OVERALL]["mrr"].lo, const.metrics[OVERALL]["mrr"].hi
    assert lo <= const.metrics[OVERALL]["mrr"].mean <= hi


def test_users_subset_is_seeded_and_nested(slice_data: Dataset) -> None:
    ten = [u.user_id for u in select_users(slice_data, "test", 10, 42)]
    twenty = [u.user_id for u in select_users(slice_data, "test", 20, 42)]
    assert len(ten) == 10 and set(ten) <= set(twenty)
    assert ten == [u.user_id for u in select_users(slice_data, "test", 10, 42)]
    assert ten != [u.user_id for u in select_users(slice_data, "test", 10, 7)]
    assert len(select_users(slice_data, "test", 0, 42)) == 40


def test_valid_fn(slice_data: Dataset, settings: Settings) -> None:
    oracle = OracleScorer(slice_data, settings)
    assert make_valid_fn(slice_data, settings, users=10)(oracle) == 1.0
    const = ConstantScorer(slice_data, settings)
    value = valid_ndcg10(const)
    assert 0.0 <= value <= 1.0
    assert valid_ndcg10(const) == value  # cached evaluator, same candidates and tie draws


def test_score_contract_violation_is_reported(slice_data: Dataset, settings: Settings) -> None:
    class Short(ConstantScorer):
        def score(
            self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
        ) -> list[np.ndarray]:
            return [np.zeros(1) for _ in candidates]

    ev = RankingEvaluator(slice_data, settings, protocol="sampled-100", users=5)
    with pytest.raises(ValueError, match="scores for"):
        ev(Short(slice_data, settings))
