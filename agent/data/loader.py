"""Pick the reader for a data folder or file and load it into a ``Dataset``.

Formats: ``shared`` (items.jsonl + sequences.jsonl, splits given), ``table`` (an interaction
table + an item table, split here) and ``amazon`` (review + meta dumps per domain, split here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.config import AmazonSource, DataSettings
from agent.data.amazon import discover_sources, read_amazon
from agent.data.schema import DataError, Dataset
from agent.data.shared_format import ITEMS_FILE, SEQUENCES_FILE, read_shared
from agent.data.tables import INTERACTIONS_STEM, ITEMS_STEM, find_table, read_tables

log = logging.getLogger(__name__)


def detect_format(path: Path, settings: DataSettings | None = None) -> str:
    """shared, table or amazon, from the files found (and from settings that name files)."""
    if not path.exists():
        raise DataError("data path not found", path=path)
    if path.is_dir() and (path / ITEMS_FILE).is_file() and (path / SEQUENCES_FILE).is_file():
        return "shared"
    if settings is not None and settings.amazon:
        return "amazon"
    if settings is not None and settings.interactions is not None:
        return "table"
    folder = path if path.is_dir() else path.parent
    if find_table(folder, ITEMS_STEM) is not None and (
        path.is_file() or find_table(folder, INTERACTIONS_STEM) is not None
    ):
        return "table"
    if path.is_dir() and discover_sources(path):
        return "amazon"
    raise DataError(
        f"cannot tell the data format: expected {ITEMS_FILE} + {SEQUENCES_FILE} (shared), "
        f"{INTERACTIONS_STEM}.* + {ITEMS_STEM}.* (table) or meta_<name>.json.gz + "
        "<name>.json.gz (amazon) in the folder, or set data.format",
        path=path,
    )


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def _table_paths(settings: DataSettings) -> tuple[Path, Path]:
    path = Path(settings.path)
    base = _folder(path)
    if settings.interactions is not None:
        interactions: Path | None = _resolve(base, settings.interactions)
    else:
        interactions = path if path.is_file() else find_table(base, INTERACTIONS_STEM)
    if settings.items_table is not None:
        items: Path | None = _resolve(base, settings.items_table)
    else:
        items = find_table(base, ITEMS_STEM)
    if interactions is None:
        raise DataError(
            f"no {INTERACTIONS_STEM}.* table in the folder (or set data.interactions)", path=base
        )
    if items is None:
        raise DataError(
            f"no {ITEMS_STEM}.* table in the folder (or set data.items_table)", path=base
        )
    return interactions, items


def _amazon_sources(settings: DataSettings) -> list[AmazonSource]:
    base = _folder(Path(settings.path))
    if not settings.amazon:
        sources = discover_sources(base)
        if not sources:
            raise DataError(
                "no Amazon files (meta_<name>.json.gz + <name>.json.gz): set data.amazon",
                path=base,
            )
        return sources
    return [
        AmazonSource(
            domain=s.domain, reviews=_resolve(base, s.reviews), meta=_resolve(base, s.meta)
        )
        for s in settings.amazon
    ]


def load_dataset(settings: DataSettings) -> Dataset:
    path = Path(settings.path)
    if not path.exists():
        raise DataError("data path not found", path=path)
    fmt = detect_format(path, settings) if settings.format == "auto" else settings.format
    log.debug("reading %s as %s", path, fmt)
    if fmt == "shared":
        data = read_shared(path, lenient=settings.lenient)
    elif fmt == "table":
        interactions, items = _table_paths(settings)
        data = read_tables(
            interactions,
            items,
            columns=settings.columns,
            k=settings.k_core,
            lenient=settings.lenient,
            name=_folder(path).name,
        )
    elif fmt == "amazon":
        data = read_amazon(_amazon_sources(settings), k=settings.k_core, lenient=settings.lenient)
    else:
        raise DataError(f"unknown format {fmt!r}", path=path)
    for line in data.report.lines():
        log.warning("%s: %s", path, line)
    for note in data.report.notes:
        log.info("%s: %s", path, note)
    return data
