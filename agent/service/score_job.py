"""``recbridge score`` on Ray (``compute.engine=ray``): the input's line groups over an actor
pool, each actor holding the retriever, loaded once from its checkpoint.

The driver parses the file into the groups the local path scores together
(``agent.scoring.line_groups``), sends each group's raw lines as one row, and writes the
records back in input order: the model sees the same batches as on the local engine, so the
scores are the same numbers. A killed job resumes from the groups already written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from agent.compute.batch import BatchJob, Columns, finish, run_batches
from agent.compute.runtime import ComputeError, worker_settings
from agent.config import Settings
from agent.models.base import Recommender
from agent.scoring import (
    ScoreSummary,
    line_groups,
    log_summary,
    numbered_lines,
    score_group,
    write_records,
)

log = logging.getLogger(__name__)


class ScoreBatch:
    """A Ray actor: the retriever ``name`` from ``checkpoint`` (or its default one)."""

    def __init__(self, settings: dict[str, Any], name: str, checkpoint: str | None) -> None:
        from agent.service.core import RecBridgeService

        service = RecBridgeService.from_settings(Settings.model_validate(settings), pipelines=[])
        self._model = service.retriever(
            name, train=False, checkpoint=Path(checkpoint) if checkpoint else None
        )
        self._catalog = self._model.data.items

    def __call__(self, batch: Columns) -> dict[str, np.ndarray]:
        out = np.full(len(batch["group"]), "", dtype=object)
        for i, lines in enumerate(batch["lines"]):
            numbered = [
                (int(n), raw.encode("utf-8", "surrogateescape")) for n, raw in json.loads(lines)
            ]
            groups = list(line_groups(iter(numbered), self._catalog, ScoreSummary(), 1 << 30))
            records = [rec for group in groups for rec in score_group(self._model, group)]
            out[i] = "".join(json.dumps(rec) + "\n" for rec in records)
        return {"group": batch["group"], "records": out}


def _job_key(input_path: Path, model: Recommender, checkpoint: Path | None, size: int) -> str:
    stat = input_path.stat()
    body = [str(input_path.resolve()), stat.st_size, stat.st_mtime_ns, model.name, size]
    body.append(str(checkpoint.resolve()) if checkpoint else "default")
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def score_file_on_ray(
    model: Recommender,
    settings: Settings,
    input_path: Path,
    output_path: Path,
    *,
    checkpoint: Path | None = None,
    batch_size: int = 256,
) -> ScoreSummary:
    """``agent.scoring.score_file`` with the groups scored by ``compute.workers`` actors.

    ``model`` is the driver's copy of the retriever: it parses the input against its
    catalogue; the actors load their own from ``checkpoint`` (default: the model's default
    checkpoint), so that must be where the driver's came from.
    """
    if not input_path.is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    started = time.perf_counter()
    summary = ScoreSummary()
    groups: list[str] = []
    with input_path.open("rb") as src:
        for group in line_groups(numbered_lines(src), model.data.items, summary, batch_size):
            # surrogates escaped: a line that is not UTF-8 reaches the actor as it was read
            groups.append(
                json.dumps([(n, raw.decode("utf-8", "surrogateescape")) for n, raw, _ in group])
            )
    job = BatchJob(
        name="score",
        key=_job_key(input_path, model, checkpoint, batch_size),
        id_column="group",
        actor=ScoreBatch,
        actor_args=(
            worker_settings(settings),
            model.name,
            str(checkpoint.resolve()) if checkpoint else None,
        ),
        batch_size=1,  # one group per call: a group is already a model batch
        workers=settings.compute.workers,
    )
    ids = [f"{i:09d}" for i in range(len(groups))]
    table, report = run_batches(job, pa.table({"group": ids, "lines": groups}), settings)
    if report.failed:
        first = next(iter(report.failed.items()))
        raise ComputeError(
            f"{len(report.failed)} of {len(groups)} line groups failed on Ray after retries "
            f"(group {first[0]}: {first[1]}); run again to resume"
        )
    by_group = dict(
        zip(table.column("group").to_pylist(), table.column("records").to_pylist(), strict=True)
    )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    lines = summary.lines
    summary = ScoreSummary(lines=lines)
    with output_path.open("w", encoding="utf-8") as dst:
        for gid in tqdm(ids, desc="writing scores", unit="group", disable=None):
            write_records((json.loads(line) for line in by_group[gid].splitlines()), dst, summary)
    finish(job, settings)
    summary.seconds = time.perf_counter() - started
    log_summary(summary, output_path)
    log.info(
        "scored %d lines on Ray (%d workers): %.0f lines/s",
        summary.lines,
        job.workers,
        summary.lines / max(summary.seconds, 1e-9),
    )
    return summary
