"""Pick the reader for a data folder or file and load it into a ``Dataset``."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.config import DataSettings
from agent.data.schema import DataError, Dataset
from agent.data.shared_format import ITEMS_FILE, SEQUENCES_FILE, read_shared

log = logging.getLogger(__name__)


def detect_format(path: Path) -> str:
    if path.is_dir() and (path / ITEMS_FILE).is_file() and (path / SEQUENCES_FILE).is_file():
        return "shared"
    raise DataError(
        f"cannot tell the data format: expected {ITEMS_FILE} and {SEQUENCES_FILE} in the folder "
        "(or set data.format to 'table' or 'amazon')",
        path=path,
    )


def load_dataset(settings: DataSettings) -> Dataset:
    path = Path(settings.path)
    if not path.exists():
        raise DataError("data path not found", path=path)
    fmt = detect_format(path) if settings.format == "auto" else settings.format
    if fmt == "shared":
        data = read_shared(path, lenient=settings.lenient)
    else:
        raise DataError(f"format {fmt!r} is not supported yet", path=path)
    for line in data.report.lines():
        log.warning("%s: %s", path, line)
    return data
