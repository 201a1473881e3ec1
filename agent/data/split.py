"""From timestamped interactions to a ``Dataset``: histories, k-core, leave-one-out split.

Shared by the table and Amazon readers, so both split the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from agent.data.schema import DataError, Dataset, Item, LoadReport, UserSequence

# A user needs a train item, a valid target and a test target to be split.
MIN_SPLIT_LENGTH = 3


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: float  # any unit; only the order matters


@dataclass(frozen=True, slots=True)
class KCoreResult:
    users_removed: int = 0
    items_removed: int = 0
    interactions_removed: int = 0
    rounds: int = 0


def build_histories(
    interactions: Iterable[Interaction], report: LoadReport | None = None
) -> dict[str, list[str]]:
    """Per-user item ids, oldest first; users in order of first appearance.

    The sort is stable, so ties in time keep the input order. Exact repeats (same user,
    item and time) are one interaction: the Amazon dumps repeat some review rows verbatim.
    """
    by_user: dict[str, list[tuple[float, str]]] = {}
    for it in interactions:
        by_user.setdefault(it.user_id, []).append((it.timestamp, it.item_id))
    histories: dict[str, list[str]] = {}
    repeats = 0
    for user, events in by_user.items():
        events.sort(key=lambda e: e[0])
        seen: set[tuple[float, str]] = set()
        items: list[str] = []
        for event in events:
            if event in seen:
                repeats += 1
                continue
            seen.add(event)
            items.append(event[1])
        histories[user] = items
    if repeats and report is not None:
        report.note(f"{repeats} repeated interactions (same user, item and time) counted once")
    return histories


def k_core(histories: dict[str, list[str]], k: int) -> tuple[dict[str, list[str]], KCoreResult]:
    """Drop users and items with fewer than ``k`` interactions until none is left.

    Dropping an item shortens histories and dropping a user lowers item counts, so this
    repeats until nothing changes; the result (the k-core) does not depend on the order.
    """
    if k <= 1:
        return histories, KCoreResult()
    current = histories
    before_users = len(histories)
    before_items = len({i for h in histories.values() for i in h})
    before_events = sum(len(h) for h in histories.values())
    rounds = 0
    while True:
        counts = Counter(i for h in current.values() for i in h)
        rare = {i for i, c in counts.items() if c < k}
        short = {u for u, h in current.items() if len(h) < k}
        if not rare and not short:
            break
        rounds += 1
        trimmed: dict[str, list[str]] = {}
        for user, items in current.items():
            if user in short:
                continue
            kept = [i for i in items if i not in rare] if rare else items
            if kept:
                trimmed[user] = kept
        current = trimmed
    after_items = len({i for h in current.values() for i in h})
    return current, KCoreResult(
        users_removed=before_users - len(current),
        items_removed=before_items - after_items,
        interactions_removed=before_events - sum(len(h) for h in current.values()),
        rounds=rounds,
    )


def leave_one_out(histories: dict[str, list[str]]) -> tuple[list[UserSequence], int]:
    """Chronological leave-one-out: train = all but the last two, valid adds the second
    last (its target), test adds the last. Users too short for that get a train row only.

    Returns the rows (all train rows, then valid, then test) and the number of short users.
    """
    train: list[UserSequence] = []
    valid: list[UserSequence] = []
    test: list[UserSequence] = []
    short = 0
    for user, items in histories.items():
        seq = tuple(items)
        if len(seq) < MIN_SPLIT_LENGTH:
            short += 1
            train.append(UserSequence(user_id=user, split="train", items=seq))
            continue
        train.append(UserSequence(user_id=user, split="train", items=seq[:-2]))
        valid.append(UserSequence(user_id=user, split="valid", items=seq[:-1]))
        test.append(UserSequence(user_id=user, split="test", items=seq))
    return train + valid + test, short


def build_dataset(
    name: str,
    items: dict[str, Item],
    interactions: Iterable[Interaction],
    *,
    k: int,
    report: LoadReport,
    source: str,
) -> Dataset:
    """Histories, k-core, split; keeps only the items some kept interaction uses.

    ``interactions`` must only name items in ``items``; ``source`` names the input in errors.
    """
    histories = build_histories(interactions, report)
    if not histories:
        raise DataError("no usable interactions", path=source)
    histories, core = k_core(histories, k)
    if core.rounds:
        report.note(
            f"{k}-core: removed {core.users_removed} users, {core.items_removed} items, "
            f"{core.interactions_removed} interactions ({core.rounds} rounds)"
        )
    if not histories:
        raise DataError(f"no users left after the {k}-core filter", path=source)
    rows, short = leave_one_out(histories)
    if short:
        report.note(
            f"{short} users with fewer than {MIN_SPLIT_LENGTH} interactions: train row only"
        )
    used = {i for h in histories.values() for i in h}
    kept = {iid: item for iid, item in items.items() if iid in used}
    if len(kept) < len(items):
        report.note(f"{len(items) - len(kept)} items without kept interactions left out")
    return Dataset(name=name, items=kept, users=rows, report=report)
