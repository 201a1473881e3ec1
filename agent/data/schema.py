"""The in-memory cross-domain dataset every part of RecBridge reads.

Items carry a domain and text fields; users carry ordered, domain-tagged histories. A row of
split ``valid`` or ``test`` holds the history followed by the held-out target (its last item),
as in the shared JSONL format; a row of split ``train`` is all history.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        field_name: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.field_name = field_name
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            # Parquet has no text lines: its readers say "row" (1-based data row) instead.
            where.append(f"{unit} {line}")
        if field_name is not None:
            where.append(f"field '{field_name}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


DISPLAY_TITLE_CHARS = 90  # longer titles (ad copy) are cut for display, at a word boundary


def clean_text(value: str) -> str:
    """HTML entities decoded once (``Oats &amp; Honey`` -> ``Oats & Honey``), spaces collapsed."""
    return " ".join(html.unescape(value).split())


def display_title(title: str, limit: int = DISPLAY_TITLE_CHARS) -> str:
    """``title`` cut at a word boundary to about ``limit`` characters, with an ellipsis."""
    if len(title) <= limit:
        return title
    head = title[: limit + 1]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else title[:limit]).rstrip(" ,;:-(&/") + "…"


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    domain: str
    title: str
    categories: tuple[str, ...] = ()
    description: str = ""
    brand: str = ""
    price: str = ""
    # The title exactly as the source wrote it, when cleaning changed it (else ""). The item
    # text that is embedded uses it: every trained checkpoint rests on those vectors.
    source_title: str = ""

    @classmethod
    def read(
        cls,
        item_id: str,
        domain: str,
        title: str,
        categories: tuple[str, ...] = (),
        description: str = "",
        brand: str = "",
        price: str = "",
    ) -> Item:
        """An item as a reader makes it: text fields cleaned (``clean_text``), once, here."""
        clean = clean_text(title)
        return cls(
            item_id=item_id,
            domain=domain,
            title=clean,
            categories=tuple(clean_text(c) for c in categories),
            description=clean_text(description),
            brand=clean_text(brand),
            price=price,
            source_title=title if clean != title else "",
        )

    @property
    def display_title(self) -> str:
        """The title for people: long ad-copy titles cut at a word boundary."""
        return display_title(self.title)


@dataclass(frozen=True, slots=True)
class UserSequence:
    user_id: str
    split: Split
    items: tuple[str, ...]  # oldest first; for valid/test the last one is the target

    @property
    def history(self) -> tuple[str, ...]:
        return self.items if self.split == "train" else self.items[:-1]

    @property
    def target(self) -> str | None:
        return None if self.split == "train" else self.items[-1]


@dataclass
class LoadReport:
    """What a reader skipped in lenient mode, counted by reason, with a few examples."""

    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    # What was left out by design, not for being bad (k-core, short users), one line each.
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def skip(self, reason: str, where: str, count: int = 1) -> None:
        self.skipped[reason] += count
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def lines(self) -> list[str]:
        return [
            f"skipped {count} x {reason} (e.g. {'; '.join(self.examples.get(reason, []))})"
            for reason, count in self.skipped.most_common()
        ]


class ItemCatalog:
    """Dense integer ids for items (0 is padding), with their domains."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.ids: list[str] = [it.item_id for it in items]
        self.index: dict[str, int] = {iid: i + 1 for i, iid in enumerate(self.ids)}
        self.domains: list[str] = sorted({it.domain for it in items})
        domain_pos = {d: i for i, d in enumerate(self.domains)}
        # domain_of[0] = -1 for padding
        self.domain_of = np.array([-1] + [domain_pos[it.domain] for it in items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, item_ids: Sequence[str]) -> list[int]:
        """Known ids to dense ids; unknown ids are left out (callers report them)."""
        return [self.index[i] for i in item_ids if i in self.index]

    def domain_items(self, domain: str) -> np.ndarray:
        """Dense ids of all items in ``domain``."""
        return np.flatnonzero(self.domain_of == self.domains.index(domain))


@dataclass
class Dataset:
    name: str
    items: dict[str, Item]
    users: list[UserSequence]
    report: LoadReport = field(default_factory=LoadReport)
    # (split, user_id) -> items a protocol removed from that held-out user's history that are
    # still not candidate negatives (eval/transfer.py); models see only ``history``.
    candidate_exclusions: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._catalog: ItemCatalog | None = None

    @property
    def catalog(self) -> ItemCatalog:
        if self._catalog is None:
            self._catalog = ItemCatalog(list(self.items.values()))
        return self._catalog

    @property
    def domains(self) -> list[str]:
        # From the (cached) catalog: a scan of every item cost ~2 ms per served request.
        return list(self.catalog.domains)

    def split(self, name: Split) -> list[UserSequence]:
        return [u for u in self.users if u.split == name]

    def iter_split(self, name: Split) -> Iterator[UserSequence]:
        return (u for u in self.users if u.split == name)

    def domain_of(self, item_id: str) -> str:
        return self.items[item_id].domain

    def domain_sequence(self, seq: Sequence[str]) -> list[str]:
        return [self.items[i].domain for i in seq]
