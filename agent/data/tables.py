"""Reader for generic tables: an interaction table and an item table (CSV/TSV, JSONL, Parquet).

interactions: user, item, timestamp and optionally domain (checked against the item table)
items:        item, domain, title and optionally categories, description, brand, price
Column names come from ``TableColumns``. Histories are ordered by time, optionally k-cored,
then split leave-one-out (see ``agent.data.split``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from agent.config import TableColumns
from agent.data.fields import Pos, get_categories, get_id, get_text, get_timestamp
from agent.data.rows import TABLE_SUFFIXES, iter_rows, position_unit, table_kind
from agent.data.schema import DataError, Dataset, Item, LoadReport
from agent.data.split import Interaction, build_dataset

INTERACTIONS_STEM = "interactions"
ITEMS_STEM = "items"


def find_table(folder: Path, stem: str) -> Path | None:
    """``folder/stem.<suffix>`` for the one table suffix present; None if there is none."""
    found = [folder / f"{stem}{s}" for s in TABLE_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise DataError(
            f"several {stem} tables ({', '.join(p.name for p in found)}): name one in settings",
            path=folder,
        )
    return found[0] if found else None


def read_item_table(
    path: Path,
    columns: TableColumns,
    *,
    lenient: bool = False,
    report: LoadReport | None = None,
) -> dict[str, Item]:
    report = report if report is not None else LoadReport()
    unit = position_unit(path)
    # CSV cells are flat strings, so several categories share one cell, "|"-separated.
    separator = "|" if table_kind(path) in ("csv", "tsv") else None
    items: dict[str, Item] = {}
    first: dict[str, int] = {}
    required = (columns.item, columns.domain, columns.title)
    for line, record in iter_rows(path, required, lenient=lenient, report=report):
        pos = Pos(path, line, unit)
        try:
            item_id = get_id(record, columns.item, pos)
            if item_id in items:
                raise pos.error(
                    f"duplicate item id {item_id!r} (first on {unit} {first[item_id]})",
                    columns.item,
                )
            item = Item.read(
                item_id=item_id,
                domain=get_text(record, columns.domain, pos, required=True),
                title=get_text(record, columns.title, pos, required=True),
                categories=get_categories(record, columns.categories, pos, separator=separator),
                description=get_text(record, columns.description, pos),
                brand=get_text(record, columns.brand, pos),
                price=get_text(record, columns.price, pos),
            )
        except DataError as exc:
            if not lenient:
                raise
            report.skip(f"bad item ({exc.field_name or 'line'})", pos.ref)
            continue
        items[item_id] = item
        first[item_id] = line
    if not items:
        raise DataError("no items", path=path)
    return items


def iter_interactions(
    path: Path,
    columns: TableColumns,
    items: dict[str, Item],
    *,
    items_path: Path,
    lenient: bool = False,
    report: LoadReport | None = None,
) -> Iterator[Interaction]:
    report = report if report is not None else LoadReport()
    unit = position_unit(path)
    required = (columns.user, columns.item, columns.timestamp)
    for line, record in iter_rows(path, required, lenient=lenient, report=report):
        pos = Pos(path, line, unit)
        reason = "bad interaction"
        try:
            user_id = get_id(record, columns.user, pos)
            item_id = get_id(record, columns.item, pos)
            timestamp = get_timestamp(record, columns.timestamp, pos)
            if item_id not in items:
                reason = "interaction with an item not in the item table"
                raise pos.error(
                    f"unknown item {item_id!r} (not in {items_path.name})", columns.item
                )
            domain = get_text(record, columns.domain, pos)
            if domain and domain != items[item_id].domain:
                raise pos.error(
                    f"domain {domain!r} differs from the item table's "
                    f"{items[item_id].domain!r} for item {item_id!r}",
                    columns.domain,
                )
        except DataError as exc:
            if not lenient:
                raise
            report.skip(f"{reason} ({exc.field_name or 'line'})", pos.ref)
            continue
        yield Interaction(user_id=user_id, item_id=item_id, timestamp=timestamp)


def read_tables(
    interactions_path: Path,
    items_path: Path,
    *,
    columns: TableColumns | None = None,
    k: int = 0,
    lenient: bool = False,
    name: str | None = None,
) -> Dataset:
    columns = columns or TableColumns()
    report = LoadReport()
    items = read_item_table(items_path, columns, lenient=lenient, report=report)
    interactions = iter_interactions(
        interactions_path,
        columns,
        items,
        items_path=items_path,
        lenient=lenient,
        report=report,
    )
    return build_dataset(
        name or interactions_path.parent.name,
        items,
        interactions,
        k=k,
        report=report,
        source=str(interactions_path),
    )
