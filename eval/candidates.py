"""Candidate sets for ranking evaluation, seeded and saved so every model sees the same ones.

Protocols (the target is always ranked against items of its own domain):

- ``sampled-999``: the target + 999 negatives drawn uniformly without replacement from the
  target's domain, excluding every item the user interacted with before the target and the
  target itself (the protocol of the C2DSR / LLMCDSR papers on food-kitchen).
- ``sampled-100``: the same with 100 negatives (cheap; used for early stopping).
- ``full``: every item of the target's domain the user did not interact with before the target,
  the target included. Nothing is stored for it: the sets are recomputed per user on the fly
  (cheap and deterministic).

"Interacted with before the target" is the user's history plus its
``Dataset.candidate_exclusions`` entry: the items a protocol removed from the history (the
zero-shot ``history_from="source"`` view, ``eval.transfer``), which the models do not see but
which are no negatives either.

Where a domain has fewer eligible items than negatives asked for (small slices), all of them
are used and the shortfall is logged.

Randomness is per user: a numpy Generator seeded from ``settings.seed`` and a hash of
(split, user id), so any subset of users gets exactly the candidates it gets in the full run.

Sampled sets are written to a JSONL file (default ``<work_dir>/candidates/``): a header line
``{"recbridge_candidates": 1, "protocol", "seed", "split", "data", "fingerprint", ...}`` then one
line per user ``{"user_id", "split", "domain", "target", "candidates": [...]}`` with the target
at a random position. A later run with the same data, split, protocol and seed reuses the file;
a file made for other data (different fingerprint) is an error, never silently reused. Where
the split has candidate exclusions, they are part of the fingerprint, the header counts them
(``"exclusions"``: users) and the file name ends in ``-excl.jsonl``; without any, the file is
what it always was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset, Split, UserSequence

log = logging.getLogger(__name__)

Protocol = Literal["sampled-999", "sampled-100", "full"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
NEGATIVES: dict[str, int] = {"sampled-999": 999, "sampled-100": 100}
FORMAT_VERSION = 1
# (split, user_id) -> items excluded from the user's candidates besides its history.
Exclusions = Mapping[tuple[str, str], tuple[str, ...]]


class CandidatesError(ValueError):
    """A candidates file that cannot be used with this data or these settings."""


@dataclass(frozen=True, slots=True)
class CandidateSet:
    user_id: str
    split: str
    domain: str
    target: str
    candidates: tuple[str, ...]
    target_index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "split": self.split,
            "domain": self.domain,
            "target": self.target,
            "candidates": list(self.candidates),
        }


def stable_user_key(split: str, user_id: str, purpose: str) -> int:
    """A 64-bit integer from (purpose, split, user id), the same in every process."""
    digest = hashlib.sha256(f"{purpose}\0{split}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def user_rng(seed: int, split: str, user_id: str, purpose: str) -> np.random.Generator:
    # seed % 2**64: SeedSequence needs non-negative entropy; negative seeds stay distinct.
    return np.random.default_rng([seed % 2**64, stable_user_key(split, user_id, purpose)])


def split_exclusions(data: Dataset, split: str) -> dict[str, tuple[str, ...]]:
    """The split's non-empty candidate exclusions, by user id."""
    return {u: items for (s, u), items in data.candidate_exclusions.items() if s == split and items}


def data_fingerprint(data: Dataset, split: Split) -> str:
    """Content hash of what candidates depend on: item ids + domains, the split's rows and,
    only where there are any, the split's candidate exclusions."""
    h = hashlib.sha256()
    for item_id in sorted(data.items):
        h.update(f"{item_id}\t{data.items[item_id].domain}\n".encode())
    h.update(f"--{split}--\n".encode())
    for user in sorted(data.iter_split(split), key=lambda u: u.user_id):
        h.update(f"{user.user_id}\t{' '.join(user.items)}\n".encode())
    exclusions = split_exclusions(data, split)
    if exclusions:  # absent: the hash of data without exclusions is unchanged
        h.update(b"--excluded--\n")
        for user_id in sorted(exclusions):
            h.update(f"{user_id}\t{' '.join(exclusions[user_id])}\n".encode())
    return h.hexdigest()[:20]


class DomainPools:
    """Each domain's item ids, sorted so sampling does not depend on the catalogue's order."""

    def __init__(self, data: Dataset) -> None:
        by_domain: dict[str, list[str]] = {}
        for item in data.items.values():
            by_domain.setdefault(item.domain, []).append(item.item_id)
        self.ids: dict[str, list[str]] = {d: sorted(ids) for d, ids in by_domain.items()}
        self.pos: dict[str, dict[str, int]] = {
            d: {iid: i for i, iid in enumerate(ids)} for d, ids in self.ids.items()
        }
        self.domain_of: dict[str, str] = {iid: it.domain for iid, it in data.items.items()}
        # object arrays: np.delete + tolist is ~10x faster than filtering 27k ids in Python
        self.arrays: dict[str, np.ndarray] = {
            d: np.array(ids, dtype=object) for d, ids in self.ids.items()
        }

    def excluded(self, domain: str, history: Iterable[str]) -> set[int]:
        pos = self.pos[domain]
        return {pos[i] for i in history if i in pos}


def _target_of(user: UserSequence) -> str:
    if user.target is None:
        raise CandidatesError(f"user {user.user_id!r} of split {user.split} has no target")
    return user.target


def _seen(user: UserSequence, exclusions: Exclusions | None) -> tuple[str, ...]:
    """What the user interacted with before its target: the history + its exclusions."""
    extra = exclusions.get((user.split, user.user_id), ()) if exclusions else ()
    return (*user.history, *extra) if extra else user.history


def sample_candidates(
    user: UserSequence,
    pools: DomainPools,
    n_negatives: int,
    seed: int,
    exclusions: Exclusions | None = None,
) -> tuple[CandidateSet, int]:
    """The target + ``n_negatives`` sampled negatives, none in the history or the user's
    ``exclusions`` entry; returns (set, shortfall)."""
    target = _target_of(user)
    domain = pools.domain_of[target]
    ids = pools.ids[domain]
    excluded = pools.excluded(domain, _seen(user, exclusions))
    excluded.add(pools.pos[domain][target])
    eligible = np.delete(np.arange(len(ids)), sorted(excluded))
    rng = user_rng(seed, user.split, user.user_id, f"candidates-{n_negatives}")
    take = min(n_negatives, len(eligible))
    negatives = [ids[i] for i in rng.choice(eligible, size=take, replace=False)]
    # The target's position is random so position-biased scorers (LLM rerankers) gain nothing.
    index = int(rng.integers(0, take + 1))
    negatives.insert(index, target)
    return (
        CandidateSet(user.user_id, user.split, domain, target, tuple(negatives), index),
        n_negatives - take,
    )


def full_candidates(
    user: UserSequence, pools: DomainPools, exclusions: Exclusions | None = None
) -> CandidateSet:
    """Every item of the target's domain not in the history nor the user's ``exclusions``
    entry, the target included."""
    target = _target_of(user)
    domain = pools.domain_of[target]
    tpos = pools.pos[domain][target]
    drop = sorted(pools.excluded(domain, _seen(user, exclusions)) - {tpos})
    cands = tuple(np.delete(pools.arrays[domain], drop).tolist())
    index = tpos - int(np.searchsorted(drop, tpos))  # excluded items before the target
    return CandidateSet(user.user_id, user.split, domain, target, cands, index)


class Candidates:
    """Candidate sets of one split and protocol; ``get(user)`` for any user of the split."""

    def __init__(
        self,
        protocol: str,
        split: str,
        seed: int,
        pools: DomainPools,
        sets: dict[str, CandidateSet] | None = None,
        path: Path | None = None,
        exclusions: Exclusions | None = None,
    ) -> None:
        self.protocol = protocol
        self.split = split
        self.seed = seed
        self.pools = pools
        self.sets = sets
        self.path = path
        self.exclusions = exclusions

    def get(self, user: UserSequence) -> CandidateSet:
        if self.sets is None:  # full: computed on the fly, never stored
            return full_candidates(user, self.pools, self.exclusions)
        try:
            return self.sets[user.user_id]
        except KeyError:
            raise CandidatesError(
                f"user {user.user_id!r} is not in candidates file {self.path}"
            ) from None

    def count(self, user: UserSequence) -> int:
        """How many candidates ``get(user)`` returns, without building a full set."""
        if self.sets is not None:
            return len(self.get(user).candidates)
        target = _target_of(user)
        domain = self.pools.domain_of[target]
        seen = self.pools.excluded(domain, _seen(user, self.exclusions))
        seen.discard(self.pools.pos[domain][target])
        return len(self.pools.ids[domain]) - len(seen)

    def domain(self, user: UserSequence) -> str:
        return self.pools.domain_of[_target_of(user)]

    def __iter__(self) -> Iterator[CandidateSet]:
        return iter(self.sets.values()) if self.sets is not None else iter(())


def build_sampled(
    users: Sequence[UserSequence],
    pools: DomainPools,
    protocol: str,
    seed: int,
    exclusions: Exclusions | None = None,
) -> dict[str, CandidateSet]:
    n_neg = NEGATIVES[protocol]
    sets: dict[str, CandidateSet] = {}
    short_users = short_total = 0
    for user in users:
        cset, short = sample_candidates(user, pools, n_neg, seed, exclusions)
        sets[user.user_id] = cset
        if short:
            short_users += 1
            short_total += short
    if short_users:
        log.warning(
            "%s: %d users have fewer than %d eligible negatives in their target's domain "
            "(%d negatives missing in all); they are ranked among all eligible items",
            protocol,
            short_users,
            n_neg,
            short_total,
        )
    return sets


def default_path(settings: Settings, data: Dataset, split: Split, protocol: str) -> Path:
    """``<data>-<split>-<protocol>-seed<seed>.jsonl``; ``-excl`` before ``.jsonl`` where the
    split has candidate exclusions (a file sampled without them is then never looked at)."""
    folder = settings.eval.candidates_dir or settings.work_dir / "candidates"
    excl = "-excl" if split_exclusions(data, split) else ""
    return folder / f"{data.name}-{split}-{protocol}-seed{settings.seed}{excl}.jsonl"


def save_candidates(path: Path, header: dict[str, Any], sets: Iterable[CandidateSet]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(header) + "\n")
        for cset in sets:
            fh.write(json.dumps(cset.to_json()) + "\n")
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file


def _check_header(path: Path, header: Any, expected: dict[str, Any]) -> None:
    if not isinstance(header, dict) or header.get("recbridge_candidates") != FORMAT_VERSION:
        raise CandidatesError(f"{path}: not a RecBridge candidates file (version {FORMAT_VERSION})")
    for key in ("protocol", "split", "seed"):
        if header.get(key) != expected[key]:
            raise CandidatesError(
                f"{path}: made for {key}={header.get(key)!r}, this run uses {expected[key]!r}"
            )
    if header.get("fingerprint") != expected["fingerprint"]:
        raise CandidatesError(
            f"{path}: made for other data (data {header.get('data')!r}, fingerprint "
            f"{header.get('fingerprint')}; this data {expected['data']!r}, fingerprint "
            f"{expected['fingerprint']}). Delete the file, or point eval.candidates_dir / "
            "work_dir elsewhere, to sample new candidates."
        )


def load_candidates(path: Path, expected: dict[str, Any]) -> dict[str, CandidateSet]:
    sets: dict[str, CandidateSet] = {}
    with path.open(encoding="utf-8") as fh:
        try:
            _check_header(path, json.loads(fh.readline() or "null"), expected)
            for lineno, line in enumerate(fh, start=2):
                row = json.loads(line)
                cands = tuple(row["candidates"])
                if cands.count(row["target"]) != 1:
                    raise CandidatesError(f"{path}:{lineno}: target must appear exactly once")
                sets[row["user_id"]] = CandidateSet(
                    row["user_id"],
                    row["split"],
                    row["domain"],
                    row["target"],
                    cands,
                    cands.index(row["target"]),
                )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CandidatesError(f"{path}: corrupt candidates file ({exc!r})") from None
    return sets


def get_candidates(
    data: Dataset,
    settings: Settings,
    split: Split,
    protocol: str,
    path: Path | None = None,
) -> Candidates:
    """The split's candidate sets: reused from ``path`` (default location) or made and saved."""
    if protocol not in PROTOCOLS:
        raise CandidatesError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    pools = DomainPools(data)
    # Only the split's own, non-empty entries: data without any builds exactly what it did.
    exclusions: dict[tuple[str, str], tuple[str, ...]] = {
        (split, u): items for u, items in split_exclusions(data, split).items()
    }
    if protocol == "full":
        return Candidates(protocol, split, settings.seed, pools, exclusions=exclusions)
    path = path or default_path(settings, data, split, protocol)
    expected: dict[str, Any] = {
        "recbridge_candidates": FORMAT_VERSION,
        "protocol": protocol,
        "split": split,
        "seed": settings.seed,
        "data": data.name,
        "fingerprint": data_fingerprint(data, split),
    }
    if exclusions:
        expected["exclusions"] = len(exclusions)
    users = data.split(split)
    if path.is_file():
        sets = load_candidates(path, expected)
        log.info("reusing candidates %s (%d users)", path, len(sets))
    else:
        sets = build_sampled(users, pools, protocol, settings.seed, exclusions)
        save_candidates(path, {**expected, "n_users": len(sets)}, sets.values())
        log.info("wrote candidates %s (%d users, %s)", path, len(sets), protocol)
    return Candidates(protocol, split, settings.seed, pools, sets, path, exclusions)
