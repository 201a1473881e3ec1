"""Evaluate a Recommender on held-out targets, in the style of sentence-transformers evaluators.

    evaluator = RankingEvaluator(data, settings, split="test", protocol="sampled-999")
    result = evaluator(model)            # EvalResult: per-domain + overall metrics with CIs
    result.primary                       # NDCG@10 overall (evaluator.primary_metric)

For early stopping, trainers take a ``ValidFn``: ``valid_ndcg10`` (reads data and settings from
the model) or ``make_valid_fn(data, settings)``; both rank the valid targets under
``settings.eval.valid_protocol`` (sampled-100 by default), optionally on a seeded subset of
``settings.train.valid_users`` users, without bootstrap.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from agent.config import Settings
from agent.data.schema import Dataset, Split, UserSequence
from agent.models.base import Recommender, ValidFn
from eval.candidates import get_candidates, stable_user_key
from eval.metrics import MetricValue, summarize, target_rank, tie_uniform

log = logging.getLogger(__name__)

OVERALL = "overall"
# Bounds one model.score call under the full protocol (~27k candidates a kitchen user).
MAX_CANDIDATES_PER_BATCH = 1_000_000


class EvalError(ValueError):
    """The evaluation cannot run (no users) or a model broke the scoring contract."""


@dataclass
class EvalResult:
    model: str
    split: str
    protocol: str
    n_users: int
    seconds: float
    users_per_s: float
    primary_metric: str
    # group ("overall" or a domain) -> metric name -> value
    metrics: dict[str, dict[str, MetricValue]]
    n_users_by_group: dict[str, int]
    # per user, in evaluation order: for paired comparisons and debugging
    user_ids: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    ranks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def primary(self) -> float:
        return self.metrics[OVERALL][self.primary_metric].mean

    @property
    def groups(self) -> list[str]:
        return list(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "protocol": self.protocol,
            "n_users": self.n_users,
            "seconds": self.seconds,
            "users_per_s": self.users_per_s,
            "primary_metric": self.primary_metric,
            "primary": self.primary,
            "n_users_by_group": self.n_users_by_group,
            "metrics": {
                g: {name: v.to_dict() for name, v in ms.items()} for g, ms in self.metrics.items()
            },
        }

    def per_user_rows(self) -> Iterator[dict[str, Any]]:
        for uid, dom, rank, n in zip(
            self.user_ids, self.domains, self.ranks, self.n_candidates, strict=True
        ):
            yield {
                "model": self.model,
                "user_id": uid,
                "domain": dom,
                "rank": int(rank),
                "n_candidates": int(n),
            }


def select_users(
    data: Dataset, split: Split, users: int | Sequence[str] | None, seed: int
) -> list[UserSequence]:
    """All users of the split, a seeded sample of N (nested: N users are in any M > N), or ids."""
    pool = data.split(split)
    if not pool:
        raise EvalError(f"split {split!r} has no users")
    if users is None or (isinstance(users, int) and (users <= 0 or users >= len(pool))):
        return pool
    if isinstance(users, int):
        rng = np.random.default_rng([seed % 2**64, stable_user_key(split, "", "user-subset")])
        keep = np.sort(rng.permutation(len(pool))[:users])
        return [pool[i] for i in keep]
    by_id = {u.user_id: u for u in pool}
    missing = [uid for uid in users if uid not in by_id]
    if missing:
        raise EvalError(f"{len(missing)} user ids not in split {split} (e.g. {missing[:3]})")
    return [by_id[uid] for uid in users]


def _batches(counts: Sequence[int], max_users: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges of at most max_users users and about MAX_CANDIDATES candidates."""
    start = 0
    while start < len(counts):
        stop, total = start, 0
        while stop < len(counts) and stop - start < max_users:
            total += counts[stop]
            stop += 1
            if total >= MAX_CANDIDATES_PER_BATCH:
                break
        yield start, stop
        start = stop


class RankingEvaluator:
    """Ranks each user's target among candidates of its domain; metrics per domain and overall."""

    primary_metric: ClassVar[str] = "ndcg@10"

    def __init__(
        self,
        data: Dataset,
        settings: Settings,
        split: Split | None = None,
        protocol: str | None = None,
        users: int | Sequence[str] | None = None,
        *,
        candidates_path: Path | None = None,
        bootstrap: int | None = None,
        batch_users: int | None = None,
        show_progress: bool = True,
    ) -> None:
        self.data = data
        self.settings = settings
        self.split: Split = split or settings.eval.split
        self.protocol = protocol or settings.eval.protocol
        self.ks = sorted(set(settings.eval.ks) | {10})  # ndcg@10 is the primary metric
        self.bootstrap = settings.eval.bootstrap if bootstrap is None else bootstrap
        self.batch_users = max(1, batch_users or settings.eval.batch_users)
        self.show_progress = show_progress
        self.users = select_users(
            data, self.split, settings.eval.users if users is None else users, settings.seed
        )
        self.candidates = get_candidates(
            data, settings, self.split, self.protocol, path=candidates_path
        )
        # Full-protocol sets are built per batch (a kitchen user has ~27k): only sizes kept.
        self.domains = [self.candidates.domain(u) for u in self.users]
        self.n_candidates = np.array([self.candidates.count(u) for u in self.users])

    def __call__(
        self, model: Recommender, name: str | None = None, *, batch_users: int | None = None
    ) -> EvalResult:
        """Rank every user's target; ``batch_users`` overrides the batch size (small for LLM
        rerankers: each batch is one round of requests and one cache write)."""
        name = name or model.name
        per_batch = max(1, batch_users or self.batch_users)
        seed = self.settings.seed
        ranks = np.empty(len(self.users), dtype=np.int64)
        started = time.perf_counter()
        with tqdm(
            total=len(self.users),
            unit="user",
            desc=f"eval {name}",
            leave=False,
            disable=None if self.show_progress else True,  # None: only on a terminal
        ) as bar:
            for start, stop in _batches(self.n_candidates.tolist(), per_batch):
                users = self.users[start:stop]
                sets = [self.candidates.get(u) for u in users]
                scores = model.score([u.history for u in users], [s.candidates for s in sets])
                if len(scores) != len(users):
                    raise EvalError(f"{name}.score returned {len(scores)} arrays for {len(users)}")
                for i, (u, s, sc) in enumerate(zip(users, sets, scores, strict=True)):
                    if len(sc) != len(s.candidates):
                        raise EvalError(
                            f"{name}.score: {len(sc)} scores for {len(s.candidates)} candidates "
                            f"(user {u.user_id})"
                        )
                    ranks[start + i] = target_rank(
                        sc, s.target_index, tie_uniform(seed, u.split, u.user_id)
                    )
                bar.update(len(users))
        seconds = time.perf_counter() - started
        return self._result(name, ranks, seconds)

    def _result(self, name: str, ranks: np.ndarray, seconds: float) -> EvalResult:
        domains = np.array(self.domains)
        groups = {OVERALL: np.ones(len(ranks), dtype=bool)}
        groups |= {d: domains == d for d in sorted(set(domains.tolist()))}
        metrics: dict[str, dict[str, MetricValue]] = {}
        for group, mask in groups.items():
            # Seeded per group, so adding a model or a domain does not shift other intervals.
            rng = np.random.default_rng(
                [self.settings.seed % 2**64, stable_user_key(self.split, group, "bootstrap")]
            )
            metrics[group] = summarize(ranks[mask], self.ks, self.bootstrap, rng)
        n = len(ranks)
        return EvalResult(
            model=name,
            split=self.split,
            protocol=self.protocol,
            n_users=n,
            seconds=seconds,
            users_per_s=n / seconds if seconds > 0 else float("inf"),
            primary_metric=self.primary_metric,
            metrics=metrics,
            n_users_by_group={g: int(m.sum()) for g, m in groups.items()},
            user_ids=[u.user_id for u in self.users],
            domains=domains.tolist(),
            ranks=ranks,
            n_candidates=self.n_candidates.astype(np.int64),
        )


def make_valid_fn(
    data: Dataset, settings: Settings, *, protocol: str | None = None, users: int | None = None
) -> ValidFn:
    """A ValidFn for early stopping: overall NDCG@10 on the valid split (candidates made once).

    All users go to ``model.score`` in as few calls as the candidate bound allows: a neural
    model encodes its whole item table once per call, which for sasrec-text (a text adapter
    over every item) was most of the evaluation when it came in batches of 256 users.
    """
    evaluator = RankingEvaluator(
        data,
        settings,
        split="valid",
        protocol=protocol or settings.eval.valid_protocol,
        users=settings.train.valid_users if users is None else users,
        bootstrap=0,
        batch_users=MAX_CANDIDATES_PER_BATCH,
        show_progress=False,
    )

    def valid_fn(model: Recommender) -> float:
        return evaluator(model).primary

    return valid_fn


# Dataset objects are not hashable: keyed by id, with a weakref to notice a reused id.
_VALID_CACHE: dict[tuple[int, str], tuple[weakref.ref[Dataset], ValidFn]] = {}


def valid_ndcg10(model: Recommender) -> float:
    """ValidFn that reads data and settings from the model (evaluator cached per dataset)."""
    settings = model.settings
    key = (id(model.data), settings.model_dump_json(include={"seed", "work_dir", "eval", "train"}))
    cached = _VALID_CACHE.get(key)
    if cached is None or cached[0]() is not model.data:
        for stale in [k for k, (ref, _) in _VALID_CACHE.items() if ref() is None]:
            del _VALID_CACHE[stale]
        cached = (weakref.ref(model.data), make_valid_fn(model.data, settings))
        _VALID_CACHE[key] = cached
    return cached[1](model)
