"""Ranking metrics for one held-out target per user, with bootstrap confidence intervals.

Rank (0 = best) of the target among its candidates, with RANDOM tie-breaking: the target is
placed uniformly at random among the candidates that have exactly its score, i.e.

    rank = #{candidates scored higher} + floor(u * (#{other candidates scored equal} + 1))

with ``u`` in [0, 1) drawn per user from the seed and the user id (``tie_uniform``). A constant
scorer therefore gets random-level metrics (HR@10 ~ 10/1000 on 1,000 candidates), not 0 (ties
counted against the target) or 1 (ties counted for it). The draw is the same for every model, so
two models are compared on the same tie-breaks. NaN scores count as the lowest possible score.

Per user: HR@K = [rank < K], NDCG@K = 1/log2(rank + 2) if rank < K else 0 (one relevant item,
so IDCG = 1), MRR = 1/(rank + 1). Intervals: 95% percentile bootstrap over users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eval.candidates import stable_user_key


@dataclass(frozen=True, slots=True)
class MetricValue:
    mean: float
    lo: float = float("nan")  # 95% bootstrap percentile interval; NaN when not computed
    hi: float = float("nan")

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi}


def metric_names(ks: Sequence[int]) -> list[str]:
    return [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


def tie_uniform(seed: int, split: str, user_id: str) -> float:
    """The user's tie-breaking draw in [0, 1): fixed by seed and user, the same for all models."""
    key = stable_user_key(split, user_id, f"ties-{seed}")
    return key / 2.0**64


def target_rank(scores: np.ndarray, target_index: int, u: float) -> int:
    """0-based rank of ``scores[target_index]`` with ties broken by the draw ``u`` (see above)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    t = s[target_index]
    higher = int(np.count_nonzero(s > t))
    ties = int(np.count_nonzero(s == t)) - 1  # other candidates with the target's score
    return higher + min(int(u * (ties + 1)), ties)


def per_user_metrics(ranks: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """(users, metrics) matrix in ``metric_names(ks)`` order."""
    r = np.asarray(ranks, dtype=np.float64)
    cols = [(r < k).astype(np.float64) for k in ks]
    gain = 1.0 / np.log2(r + 2.0)
    cols += [np.where(r < k, gain, 0.0) for k in ks]
    cols.append(1.0 / (r + 1.0))
    return np.stack(cols, axis=1) if len(r) else np.zeros((0, len(cols)))


def bootstrap_intervals(
    values: np.ndarray,
    n_resamples: int,
    rng: np.random.Generator,
    level: float = 0.95,
    chunk: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the column means, resampling users (rows) with replacement."""
    n, m = values.shape
    if n_resamples <= 0 or n == 0:
        return np.full(m, np.nan), np.full(m, np.nan)
    means = np.empty((n_resamples, m))
    for start in range(0, n_resamples, chunk):  # chunks bound memory at chunk * n * m floats
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return lo, hi


def summarize(
    ranks: np.ndarray, ks: Sequence[int], n_resamples: int, rng: np.random.Generator
) -> dict[str, MetricValue]:
    """Mean and bootstrap interval of every metric over the given users' ranks."""
    values = per_user_metrics(ranks, ks)
    names = metric_names(ks)
    if len(values) == 0:
        return {name: MetricValue(float("nan")) for name in names}
    means = values.mean(axis=0)
    lo, hi = bootstrap_intervals(values, n_resamples, rng)
    return {
        name: MetricValue(float(means[j]), float(lo[j]), float(hi[j]))
        for j, name in enumerate(names)
    }
