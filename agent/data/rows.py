"""Row-by-row reading of CSV/TSV, JSON-lines and Parquet tables, keeping every row's position.

Positions in errors: CSV/TSV and JSONL give the physical line of the file (a CSV header is
line 1, so the first data row is line 2, as an editor shows it); Parquet has no lines and
gives the 1-based data row ("row N").
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from agent.data.jsonl_io import iter_json_lines
from agent.data.schema import DataError, LoadReport

TableKind = Literal["csv", "tsv", "jsonl", "parquet"]
# Suffixes tried, in this order, when a table is looked up by its stem.
TABLE_SUFFIXES: tuple[str, ...] = (
    ".csv",
    ".csv.gz",
    ".tsv",
    ".tsv.gz",
    ".jsonl",
    ".jsonl.gz",
    ".parquet",
)
_KINDS: dict[str, TableKind] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".ndjson.gz": "jsonl",
    ".parquet": "parquet",
}


def table_kind(path: Path) -> TableKind:
    name = path.name.lower()
    for suffix, kind in _KINDS.items():
        if name.endswith(suffix):
            return kind
    raise DataError(f"unknown table type: expected one of {', '.join(sorted(_KINDS))}", path=path)


def position_unit(path: Path) -> str:
    return "row" if table_kind(path) == "parquet" else "line"


def iter_rows(
    path: Path,
    required: Sequence[str],
    *,
    lenient: bool = False,
    report: LoadReport | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line or row number, record) pairs; absent CSV cells come back as ``None``.

    A required column missing from a CSV header or a Parquet schema fails the whole file,
    lenient or not; in JSONL each line is checked by the caller.
    """
    kind = table_kind(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    if kind == "jsonl":
        yield from iter_json_lines(path, lenient=lenient, report=report)
    elif kind == "parquet":
        yield from _parquet_rows(path, required)
    else:
        yield from _csv_rows(path, required, delimiter="\t" if kind == "tsv" else ",")


def _open_csv(path: Path) -> TextIO:
    # newline="" lets the csv module handle quoted line breaks itself; utf-8-sig drops the
    # byte-order mark spreadsheet exports put before the header.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _missing_columns(
    path: Path, present: Sequence[str], required: Sequence[str], line: int | None
) -> None:
    for column in required:
        if column not in present:
            raise DataError(
                f"missing column (columns are: {', '.join(present) or 'none'})",
                path=path,
                line=line,
                field_name=column,
            )


def _csv_rows(
    path: Path, required: Sequence[str], *, delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_csv(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError("empty file: expected a header line", path=path, line=1)
            header = [h.strip() for h in header]
            _missing_columns(path, header, required, 1)
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                # Short rows leave None (reads as missing); extra cells are ignored.
                record: dict[str, Any] = dict.fromkeys(header)
                record.update(zip(header, cells, strict=False))
                yield reader.line_num, record
        except csv.Error as exc:
            raise DataError(f"malformed CSV ({exc})", path=path, line=reader.line_num) from None
        except UnicodeDecodeError:
            # Text streams decode ahead in chunks, so the line is not known exactly here.
            raise DataError(f"not UTF-8 text (after line {reader.line_num})", path=path) from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"cannot read compressed file ({exc})", path=path) from None


def _parquet_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    # Imported here: pyarrow is slow to import and most data sets are not Parquet.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read Parquet ({exc})", path=path) from None
    _missing_columns(path, parquet.schema_arrow.names, required, None)
    row = 0
    for batch in parquet.iter_batches():
        for record in batch.to_pylist():
            row += 1
            yield row, record
