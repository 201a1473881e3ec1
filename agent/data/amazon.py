"""Reader for the public Amazon review dumps (McAuley lab), 2018 and 2023 editions.

Each domain is a (reviews, meta) pair of JSON-lines files, plain or .gz; the edition is told
per file from its first record.
  2018 reviews: reviewerID, asin, unixReviewTime (s)   meta: asin, title, category, description,
                                                              brand, price
  2023 reviews: user_id, parent_asin (else asin),      meta: parent_asin, title, categories,
                timestamp (ms)                               description, store, price,
                                                             main_category
Users are joined across domains by id and their histories interleaved by time, then k-cored
and split leave-one-out (``agent.data.split``). Reviews are read first so that only the meta
of reviewed items is parsed and kept: the meta files hold millions of unreviewed items.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AmazonSource
from agent.data.fields import Pos, get_categories, get_id, get_text, get_timestamp
from agent.data.jsonl_io import iter_json_lines
from agent.data.schema import DataError, Dataset, Item, LoadReport, clean_text
from agent.data.split import Interaction, build_dataset

_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
_META_NAME = re.compile(r"meta_(?P<name>.+?)\.jsonl?(\.gz)?")


@dataclass(frozen=True, slots=True)
class _ReviewKeys:
    user: str
    item: str
    fallback_item: str | None
    time: str
    seconds_per_unit: float


@dataclass(frozen=True, slots=True)
class _MetaKeys:
    item: str
    categories: str
    fallback_category: str | None
    brand: str


_REVIEWS_2018 = _ReviewKeys("reviewerID", "asin", None, "unixReviewTime", 1.0)
_REVIEWS_2023 = _ReviewKeys("user_id", "parent_asin", "asin", "timestamp", 0.001)
_META_2018 = _MetaKeys("asin", "category", None, "brand")
_META_2023 = _MetaKeys("parent_asin", "categories", "main_category", "store")


def _review_keys(record: dict[str, Any], pos: Pos) -> _ReviewKeys:
    if "reviewerID" in record:
        return _REVIEWS_2018
    if "user_id" in record:
        return _REVIEWS_2023
    raise pos.error("not an Amazon review: expected reviewerID (2018) or user_id (2023)")


def _meta_keys(record: dict[str, Any], pos: Pos) -> _MetaKeys:
    if "parent_asin" in record:
        return _META_2023
    if "asin" in record:
        return _META_2018
    raise pos.error("not Amazon meta: expected parent_asin (2023) or asin (2018)")


@dataclass
class _Wanted:
    """The first review of an item, to point at when the item has no usable meta."""

    pos: Pos
    field_name: str
    reviews: int = 0


def _read_reviews(
    path: Path,
    interactions: list[Interaction],
    wanted: dict[str, _Wanted],
    *,
    lenient: bool,
    report: LoadReport,
) -> None:
    keys: _ReviewKeys | None = None
    for line, record in iter_json_lines(path, lenient=lenient, report=report):
        pos = Pos(path, line)
        try:
            keys = keys or _review_keys(record, pos)
            item_key = keys.item
            if keys.fallback_item and not record.get(item_key):
                item_key = keys.fallback_item
            user_id = get_id(record, keys.user, pos)
            item_id = get_id(record, item_key, pos)
            seconds = get_timestamp(record, keys.time, pos) * keys.seconds_per_unit
        except DataError as exc:
            if not lenient:
                raise
            report.skip(f"bad review ({exc.field_name or 'line'})", pos.ref)
            continue
        interactions.append(Interaction(user_id=user_id, item_id=item_id, timestamp=seconds))
        entry = wanted.setdefault(item_id, _Wanted(pos, item_key))
        entry.reviews += 1


def _price(record: dict[str, Any], pos: Pos) -> str:
    text = get_text(record, "price", pos)
    return "" if text == "None" else text  # some 2023 files write a missing price as "None"


def _read_meta(
    source: AmazonSource,
    wanted: dict[str, _Wanted],
    items: dict[str, Item],
    origin: dict[str, Pos],
    repeats: Counter[str],
    *,
    lenient: bool,
    report: LoadReport,
) -> None:
    path = source.meta
    keys: _MetaKeys | None = None
    for line, record in iter_json_lines(path, lenient=lenient, report=report):
        pos = Pos(path, line)
        try:
            keys = keys or _meta_keys(record, pos)
            item_id = get_id(record, keys.item, pos)
            if item_id not in wanted:
                continue  # nobody reviewed it: not parsed, not kept
            title = get_text(record, "title", pos, required=True)
            if item_id in items:
                first = items[item_id]
                if first.domain == source.domain and first.title == clean_text(title):
                    repeats[path.name] += 1  # the 2018 meta files repeat some rows verbatim
                    continue
                raise pos.error(
                    f"item {item_id!r} already read from {origin[item_id].ref} "
                    f"(domain {first.domain!r}, title {first.title!r})",
                    keys.item,
                )
            categories = get_categories(record, keys.categories, pos)
            if not categories and keys.fallback_category:
                categories = get_categories(record, keys.fallback_category, pos)
            item = Item.read(
                item_id=item_id,
                domain=source.domain,
                title=title,
                categories=categories,
                description=get_text(record, "description", pos),
                brand=get_text(record, keys.brand, pos),
                price=_price(record, pos),
            )
        except DataError as exc:
            if not lenient:
                raise
            report.skip(f"bad meta ({exc.field_name or 'line'})", pos.ref)
            continue
        items[item_id] = item
        origin[item_id] = pos


def read_amazon(
    sources: Sequence[AmazonSource],
    *,
    k: int = 0,
    lenient: bool = False,
    name: str | None = None,
) -> Dataset:
    if not sources:
        raise DataError("no Amazon sources: give data.amazon entries (domain, reviews, meta)")
    domains = [s.domain for s in sources]
    if len(set(domains)) != len(domains):
        raise DataError(f"a domain is named twice in data.amazon: {', '.join(domains)}")
    report = LoadReport()
    interactions: list[Interaction] = []
    wanted: dict[str, _Wanted] = {}
    for source in sources:
        _read_reviews(source.reviews, interactions, wanted, lenient=lenient, report=report)
    items: dict[str, Item] = {}
    origin: dict[str, Pos] = {}
    repeats: Counter[str] = Counter()
    for source in sources:
        _read_meta(source, wanted, items, origin, repeats, lenient=lenient, report=report)
    for file_name, count in repeats.items():
        report.note(f"{count} repeated meta rows in {file_name} read once")
    unmatched = [(iid, w) for iid, w in wanted.items() if iid not in items]
    if unmatched:
        metas = ", ".join(s.meta.name for s in sources)
        if not lenient:
            iid, first = unmatched[0]
            raise first.pos.error(
                f"item {iid!r} has no usable meta (in {metas}); {len(unmatched)} items are "
                "like this (lenient mode skips their reviews)",
                first.field_name,
            )
        for _iid, first in unmatched:
            report.skip("review of an item without usable meta", first.pos.ref, first.reviews)
        interactions = [i for i in interactions if i.item_id in items]
    return build_dataset(
        name or "+".join(domains),
        items,
        interactions,
        k=k,
        report=report,
        source=", ".join(str(s.reviews) for s in sources),
    )


def discover_sources(folder: Path) -> list[AmazonSource]:
    """Pair ``meta_<name>.json[l][.gz]`` with ``[reviews_]<name>[_5].json[l][.gz]``.

    The domain is named ``<name>`` (e.g. Grocery_and_Gourmet_Food), as the dumps name files.
    """
    if not folder.is_dir():
        return []
    sources: list[AmazonSource] = []
    for meta in sorted(folder.iterdir()):
        match = _META_NAME.fullmatch(meta.name)
        if match is None or not meta.is_file():
            continue
        name = match.group("name")
        found = [
            folder / f"{prefix}{name}{tail}{suffix}"
            for prefix in ("", "reviews_")
            for tail in ("", "_5")
            for suffix in _JSON_SUFFIXES
            if (folder / f"{prefix}{name}{tail}{suffix}").is_file()
        ]
        if len(found) > 1:
            raise DataError(
                f"several review files for {name} ({', '.join(p.name for p in found)}): "
                "list the domains in data.amazon",
                path=folder,
            )
        if found:
            sources.append(AmazonSource(domain=name, reviews=found[0], meta=meta))
    return sources
