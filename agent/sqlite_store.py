"""What the on-disk caches share: one table in one sqlite file, opened in WAL mode.

WAL: readers (another process) never block on a writer, and a process killed mid-write leaves
each committed transaction whole. Each cache keeps its own file name, table and methods; this
opens the file, creates the table if it is missing, counts rows, reads keys in chunks and closes
(also as a context manager).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_CHUNK = 500  # keys per SELECT ... IN (...): well under SQLite's variable limit


class SQLiteStore:
    def __init__(
        self,
        directory: Path,
        filename: str,
        table: str,
        create: str,
        *,
        timeout: float = 5.0,
        pragmas: Sequence[str] = (),
    ) -> None:
        """``create``: the table's ``CREATE TABLE IF NOT EXISTS`` statement; ``timeout``: how
        long a second writer waits for the lock before it fails; ``pragmas`` run after WAL."""
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / filename
        self.table = table
        self._db = sqlite3.connect(self.path, timeout=timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        for pragma in pragmas:
            self._db.execute(pragma)
        with self._db:
            self._db.execute(create)

    def select_in(
        self, sql: str, keys: Sequence[str], params: Sequence[Any] = ()
    ) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` for ``keys``, a chunk of keys at a time: ``{marks}`` in ``sql``
        stands for the placeholders of ``IN ({marks})``, bound after ``params``."""
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            yield from self._db.execute(sql.format(marks=marks), [*params, *chunk])

    def __len__(self) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM {self.table}").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
