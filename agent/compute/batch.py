"""A batch job on Ray Data: rows -> an actor pool -> parquet parts -> the caller's store.

Every job here has the same shape: a table of input rows with a unique id column is mapped by
a callable class (one instance per actor, so a model or an LLM client loads once per worker),
and each output batch is written as a parquet part under ``<compute_dir>/<job>/<key>/`` by
the actor that computed it. The caller
reads the results back and upserts them into its store (the embedding cache, the profile
cache, an output file), then calls ``finish`` to drop the parts.

Faults:
- An actor that dies (killed worker, lost node) is restarted and its batch retried
  (``compute.max_retries``): Ray's own fault tolerance.
- A row the job's function cannot handle comes back with a non-empty ``error`` column: the
  function catches per row, so one bad row never fails a batch. Such rows are counted and
  reported in ``JobReport.failed`` and computed again by the next run.
- A job killed midway resumes: rows already in readable parts are not sent again (the ids
  already written; Ray Data's own CheckpointConfig is beta in 2.60 and reserves a 1 GiB actor
  per filter, too heavy for a small cluster). A part is renamed into place once complete, so
  a kill mid-write leaves only a ``.partial`` file, removed at the next start. Rows written
  twice (a batch retried after its part was written) are kept once.

On several machines ``compute.out_dir`` must be storage every node sees (NFS, a mounted
bucket), as for Ray's own file checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from agent.compute.runtime import job_dir, ray_session
from agent.config import Settings

log = logging.getLogger(__name__)

ERROR_COLUMN = "error"
# A batch function: columns in, columns out (the id column and ERROR_COLUMN among them).
Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BatchJob:
    """What to run: ``actor(*actor_args)`` is built once per worker and called per batch."""

    name: str  # the job's folder and log label: embed, profile, score
    key: str  # what the results depend on (model id, settings hash): one folder per key
    id_column: str  # string ids, unique per row
    actor: type
    actor_args: tuple[Any, ...] = ()
    batch_size: int = 256
    workers: int = 2
    cpus_per_worker: float = 1.0


@dataclass
class JobReport:
    rows: int = 0  # input rows asked for
    resumed: int = 0  # found in parts from an earlier, interrupted run
    computed: int = 0  # done by this run
    failed: dict[str, str] = field(default_factory=dict)  # id -> error, after retries
    duplicates: int = 0  # rows written more than once (retried batches), kept once
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.computed / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "resumed": self.resumed,
            "computed": self.computed,
            "failed": len(self.failed),
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows_per_s, 2),
        }


class _Stage:
    """The actor: builds the job's function once, then maps batches and writes each result as
    one parquet part itself (renamed into place when complete), so parts land as batches
    finish and no extra write tasks compete with the actors for the CPUs."""

    def __init__(self, actor: type, args: tuple[Any, ...], folder: str, id_column: str) -> None:
        self._fn: Callable[[Columns], dict[str, np.ndarray]] = actor(*args)
        self._folder = Path(folder)
        self._id_column = id_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(self._fn(batch))
        ids = out[self._id_column]
        if ERROR_COLUMN not in out:
            out[ERROR_COLUMN] = np.full(len(ids), "", dtype=object)
        name = uuid.uuid4().hex
        partial = self._folder / f"{name}.partial"
        pq.write_table(pa.table({k: list(v) for k, v in out.items()}), partial)
        partial.rename(self._folder / f"{name}.parquet")
        return {self._id_column: ids}


def read_parts(folder: Path) -> tuple[pa.Table | None, int]:
    """Every readable parquet part of ``folder`` concatenated (None if there is none), and
    how many unreadable parts (cut short by a kill) were deleted."""
    tables: list[pa.Table] = []
    broken = 0
    for stale in folder.glob("*.partial"):  # a part whose writer was killed mid-write
        stale.unlink(missing_ok=True)
    for path in sorted(folder.glob("*.parquet")):
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("%s: unreadable part (%s), deleted: its rows are done again", path, exc)
            path.unlink(missing_ok=True)
            broken += 1
    if not tables:
        return None, broken
    return pa.concat_tables(tables, promote_options="default"), broken


def _first_ok(table: pa.Table, id_column: str) -> tuple[pa.Table, int]:
    """One row per id, preferring rows without an error; and how many rows were dropped."""
    errors = table.column(ERROR_COLUMN).to_pylist()
    ids = table.column(id_column).to_pylist()
    keep: dict[str, int] = {}
    for i, (row_id, error) in enumerate(zip(ids, errors, strict=True)):
        if row_id not in keep or (errors[keep[row_id]] and not error):
            keep[row_id] = i
    index = sorted(keep.values())
    return table.take(pa.array(index, type=pa.int64())), len(ids) - len(index)


def run_batches(job: BatchJob, rows: pa.Table, settings: Settings) -> tuple[pa.Table, JobReport]:
    """Map ``rows`` through ``job`` on Ray; the output table (one row per input id that has
    a result, failed ones included with their error) and the report.

    Rows found in parts of an earlier run of the same job and key are not computed again.
    """
    started = time.perf_counter()
    folder = job_dir(settings, job.name, job.key)
    report = JobReport(rows=rows.num_rows)
    row_ids = rows.column(job.id_column).to_pylist()
    if len(set(row_ids)) != len(row_ids):
        raise ValueError(f"{job.name}: the id column {job.id_column!r} has repeated values")
    earlier, _ = read_parts(folder)
    done: set[str] = set()
    if earlier is not None:
        earlier, _ = _first_ok(earlier, job.id_column)
        ok = pc.equal(earlier.column(ERROR_COLUMN), "")
        done = set(earlier.filter(ok).column(job.id_column).to_pylist())
    todo = rows.filter(
        pc.invert(pc.is_in(rows.column(job.id_column), pa.array(sorted(done), type=pa.string())))
    )
    report.resumed = rows.num_rows - todo.num_rows
    if report.resumed:
        log.info(
            "%s: %d of %d rows found in %s from an interrupted run; %d to do",
            job.name,
            report.resumed,
            rows.num_rows,
            folder,
            todo.num_rows,
        )
    if todo.num_rows:
        with ray_session(settings) as ray:
            # One block per batch, so that every actor of the pool gets work from the start.
            blocks = [
                todo.slice(start, job.batch_size)
                for start in range(0, todo.num_rows, job.batch_size)
            ]
            ds = ray.data.from_arrow(blocks).map_batches(
                _Stage,
                fn_constructor_args=(job.actor, job.actor_args, str(folder), job.id_column),
                batch_size=job.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=job.workers),
                num_cpus=job.cpus_per_worker,
                # A dead actor is restarted and its batch retried, not lost.
                max_restarts=-1,
                max_task_retries=settings.compute.max_retries,
            )
            for _ in ds.iter_batches(batch_size=None):  # the ids of the parts written
                pass
    table, _ = read_parts(folder)
    if table is None:  # no rows asked for (or every part lost): all of them count as failed
        table = pa.table(
            {job.id_column: pa.array([], pa.string()), ERROR_COLUMN: pa.array([], pa.string())}
        )
    table, report.duplicates = _first_ok(table, job.id_column)
    if report.duplicates:
        log.info(
            "%s: %d rows written twice (retried batches), kept once", job.name, report.duplicates
        )
    wanted = pc.is_in(table.column(job.id_column), rows.column(job.id_column))
    table = table.filter(wanted)
    errors = dict(
        zip(
            table.column(job.id_column).to_pylist(),
            table.column(ERROR_COLUMN).to_pylist(),
            strict=True,
        )
    )
    report.failed = {k: v for k, v in errors.items() if v}
    missing = set(row_ids) - set(errors)
    for row_id in missing:  # never silently: a row with no result is a failed row
        report.failed[row_id] = "no result came back"
    todo_ids = set(todo.column(job.id_column).to_pylist())
    report.computed = len(todo_ids - set(report.failed))
    report.seconds = time.perf_counter() - started
    log.info("%s on Ray: %s", job.name, report.as_dict())
    for row_id, error in list(report.failed.items())[:5]:
        log.warning("%s: row %s failed: %s", job.name, row_id, error)
    return table, report


def finish(job: BatchJob, settings: Settings) -> None:
    """Drop the job's parts once the caller has stored every result."""
    shutil.rmtree(settings.compute_dir / job.name / job.key, ignore_errors=True)
