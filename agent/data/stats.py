"""Descriptive numbers of a ``Dataset``: sizes per domain and split, overlap, lengths, targets.

A user's full sequence is their longest row: with a leave-one-out split that is the test row
(the others are its prefixes); where each user has one row (the shared data) it is that row.
Row lengths count the target of valid/test rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from agent.data.schema import SPLITS, Dataset, Split, UserSequence

MIXED = "mixed"  # key for rows touching more than one domain


@dataclass(frozen=True)
class LengthStats:
    count: int
    min: int
    median: float
    mean: float
    p90: float
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats:
        if not lengths:
            return cls(count=0, min=0, median=0.0, mean=0.0, p90=0.0, max=0)
        arr = np.asarray(lengths, dtype=np.float64)
        return cls(
            count=len(lengths),
            min=int(arr.min()),
            median=float(np.median(arr)),
            mean=round(float(arr.mean()), 3),
            p90=float(np.percentile(arr, 90)),
            max=int(arr.max()),
        )


@dataclass
class SplitStats:
    rows: int
    interactions: int
    users_per_domain: dict[str, int]  # rows touching the domain
    items_per_domain: dict[str, int]  # distinct items of the domain in the split's rows
    interactions_per_domain: dict[str, int]
    rows_by_mix: dict[str, int]  # a domain name = single-domain rows; "mixed" = several
    length: LengthStats
    length_by_mix: dict[str, LengthStats]
    targets_per_domain: dict[str, int]  # empty for train


@dataclass
class DataStats:
    name: str
    domains: list[str]
    users: int  # distinct user ids
    items: int
    interactions: int  # over full sequences
    items_per_domain: dict[str, int]
    users_per_domain: dict[str, int]  # users whose full sequence touches the domain
    interactions_per_domain: dict[str, int]
    users_by_domain_count: dict[int, int]  # number of domains touched -> users
    multi_domain_users: int
    overlap: dict[str, int]  # "a & b" -> users touching both a and b
    length: LengthStats  # full sequences
    length_per_domain: dict[str, LengthStats]  # per user, items of that domain only
    splits: dict[str, SplitStats]
    items_not_in_train: int  # catalogue items absent from every train row
    targets_not_in_train: dict[str, int]  # per valid/test split
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mix(domains: Sequence[str]) -> str:
    kinds = set(domains)
    return next(iter(kinds)) if len(kinds) == 1 else MIXED


def _full_sequences(data: Dataset) -> dict[str, UserSequence]:
    rank = {split: i for i, split in enumerate(SPLITS)}
    full: dict[str, UserSequence] = {}
    for row in data.users:
        best = full.get(row.user_id)
        if best is None or (len(row.items), rank[row.split]) > (len(best.items), rank[best.split]):
            full[row.user_id] = row
    return full


def _split_stats(data: Dataset, split: Split) -> SplitStats:
    rows = data.split(split)
    users: Counter[str] = Counter()
    events: Counter[str] = Counter()
    items: dict[str, set[str]] = {d: set() for d in data.domains}
    mixes: Counter[str] = Counter()
    by_mix: dict[str, list[int]] = {}
    targets: Counter[str] = Counter()
    for row in rows:
        domains = data.domain_sequence(row.items)
        events.update(domains)
        users.update(set(domains))
        for item, domain in zip(row.items, domains, strict=True):
            items[domain].add(item)
        mix = _mix(domains)
        mixes[mix] += 1
        by_mix.setdefault(mix, []).append(len(row.items))
        if row.target is not None:
            targets[data.domain_of(row.target)] += 1
    return SplitStats(
        rows=len(rows),
        interactions=sum(len(r.items) for r in rows),
        users_per_domain={d: users[d] for d in data.domains},
        items_per_domain={d: len(items[d]) for d in data.domains},
        interactions_per_domain={d: events[d] for d in data.domains},
        rows_by_mix=dict(sorted(mixes.items())),
        length=LengthStats.of([len(r.items) for r in rows]),
        length_by_mix={m: LengthStats.of(v) for m, v in sorted(by_mix.items())},
        targets_per_domain={} if split == "train" else {d: targets[d] for d in data.domains},
    )


def compute_stats(data: Dataset) -> DataStats:
    domains = data.domains
    full = _full_sequences(data)
    touched: list[set[str]] = []
    per_domain_len: dict[str, list[int]] = {d: [] for d in domains}
    events: Counter[str] = Counter()
    for row in full.values():
        counts = Counter(data.domain_sequence(row.items))
        events.update(counts)
        touched.append(set(counts))
        for domain, n in counts.items():
            per_domain_len[domain].append(n)
    overlap = {
        f"{a} & {b}": sum(1 for t in touched if a in t and b in t)
        for a, b in combinations(domains, 2)
    }
    in_train = {i for row in data.iter_split("train") for i in row.items}
    not_in_train = set(data.items) - in_train
    item_domains = Counter(it.domain for it in data.items.values())
    return DataStats(
        name=data.name,
        domains=domains,
        users=len(full),
        items=len(data.items),
        interactions=sum(len(r.items) for r in full.values()),
        items_per_domain={d: item_domains[d] for d in domains},
        users_per_domain={d: sum(1 for t in touched if d in t) for d in domains},
        interactions_per_domain={d: events[d] for d in domains},
        users_by_domain_count=dict(sorted(Counter(len(t) for t in touched).items())),
        multi_domain_users=sum(1 for t in touched if len(t) > 1),
        overlap=overlap,
        length=LengthStats.of([len(r.items) for r in full.values()]),
        length_per_domain={d: LengthStats.of(v) for d, v in per_domain_len.items()},
        splits={s: _split_stats(data, s) for s in SPLITS},
        items_not_in_train=len(not_in_train),
        targets_not_in_train={
            s: sum(1 for r in data.iter_split(s) if r.target in not_in_train)
            for s in ("valid", "test")
        },
        skipped=dict(data.report.skipped.most_common()),
        notes=list(data.report.notes),
    )
