"""User slices where a second stage may help (RANKING.md: gains concentrate in short
histories, cold items and domain switches), as boolean masks over evaluated users.

- ``short-history``: at most ``SHORT_HISTORY`` history items (every held-out user of
  food-kitchen has 4 or more, so the 1-3 slice the field reports is empty there; 4-5 is its
  shortest tenth);
- ``domain-switch``: the last history item is of the other domain than the target;
- ``cold-target``: the target has at most ``COLD_MAX`` interactions in train rows;
- one slice per target domain.
Counts come from train rows only, like every feature of the ranker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from agent.data.schema import Dataset, UserSequence
from agent.rerank.features import COLD_MAX

ALL = "all"
SHORT_HISTORY = 5


def train_counts(data: Dataset) -> Counter[str]:
    return Counter(i for u in data.iter_split("train") for i in u.items)


def user_slices(
    data: Dataset, users: Sequence[UserSequence], counts: Counter[str] | None = None
) -> dict[str, np.ndarray]:
    """Slice name -> mask over ``users`` (held-out users: history + target)."""
    counts = counts if counts is not None else train_counts(data)
    n = len(users)
    hist_len = np.asarray([len(u.history) for u in users])
    targets = [u.target or "" for u in users]
    target_dom = np.asarray([data.items[t].domain if t in data.items else "" for t in targets])
    last_dom = np.asarray([data.items[u.history[-1]].domain if u.history else "" for u in users])
    out: dict[str, np.ndarray] = {
        ALL: np.ones(n, dtype=bool),
        "short-history": (hist_len >= 1) & (hist_len <= SHORT_HISTORY),
        "domain-switch": (last_dom != "") & (last_dom != target_dom),
        "cold-target": np.asarray([counts.get(t, 0) <= COLD_MAX for t in targets]),
    }
    for domain in data.domains:
        out[f"domain={domain}"] = target_dom == domain
    return out
