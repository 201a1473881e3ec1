"""Most-popular baseline: a candidate's score is how often it occurs in the train histories.

Counts come from train rows only, so that no valid/test target is counted. An item belongs to
one domain, so its count is its popularity within that domain, which is what ranking the
candidates of one domain needs.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE, FitReport, Recommender, ValidFn
from agent.models.checkpoint import CheckpointError, read_config, write_config

log = logging.getLogger(__name__)

COUNTS_FILE = "counts.json"


class PopularityRecommender(Recommender):
    name = "popularity"
    trainable = False

    def __init__(self, data: Dataset, settings: Settings) -> None:
        super().__init__(data, settings)
        self.counts: Counter[str] | None = None

    def _count(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for user in self.data.iter_split("train"):
            counts.update(user.history)
        return counts

    def _ensure_counts(self) -> Counter[str]:
        if self.counts is None:
            self.counts = self._count()
        return self.counts

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        start = time.perf_counter()
        self.counts = self._count()
        report = FitReport(epochs=0, best_epoch=0)
        if valid_fn is not None:
            report.best_valid_ndcg10 = float(valid_fn(self))
        report.seconds = time.perf_counter() - start
        if out is not None:
            self.save(out)
            report.checkpoint = out
        return report

    def domain_counts(self) -> dict[str, Counter[str]]:
        """The counts split by the items' domains."""
        by_domain: dict[str, Counter[str]] = {d: Counter() for d in self.data.domains}
        for item_id, n in self._ensure_counts().items():
            if item_id in self.data.items:
                by_domain[self.data.domain_of(item_id)][item_id] = n
        return by_domain

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        counts = self._ensure_counts()
        known = self.data.items
        out: list[np.ndarray] = []
        for cands in candidates:
            out.append(
                np.array(
                    [float(counts[c]) if c in known else UNKNOWN_ITEM_SCORE for c in cands],
                    dtype=np.float64,
                )
            )
        return out

    def save(self, path: Path) -> None:
        counts = self._ensure_counts()
        write_config(path, self.name, self.data.catalog, {"source": "train histories"})
        (path / COUNTS_FILE).write_text(json.dumps(dict(counts)), encoding="utf-8")

    def load(self, path: Path) -> None:
        read_config(path, self.name, self.data.catalog)
        counts_path = path / COUNTS_FILE
        if not counts_path.is_file():
            raise CheckpointError(f"no {COUNTS_FILE}", path=path)
        raw = json.loads(counts_path.read_text(encoding="utf-8"))
        self.counts = Counter({str(k): int(v) for k, v in raw.items()})
