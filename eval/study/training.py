"""Training runs of a study: processes running the library's ``train_checkpoint``
(``python -m eval.modelprep train``, through the same ``eval.transfer.train_under_protocol`` that
``recbridge train`` uses), a few at a time, each with its own log."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from eval.study.spec import StudySpec, checkpoint_dir, has_run, trained_rows, transfers
from eval.transfer import Transfer

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    row: str
    seed: int
    transfer: Transfer
    out: Path
    argv: list[str]
    log_path: Path
    returncode: int | None = None

    @property
    def label(self) -> str:
        return f"{self.transfer.model_tag}/{self.row}/seed{self.seed}"

    def succeeded(self) -> bool:
        return self.returncode == 0 and has_run(self.out)


@dataclass
class ProcessJob:
    """Any other command that runs beside the training runs in the same pool (``recbridge
    run`` profiles its two-stage users while the retrievers train)."""

    label: str
    argv: list[str]
    log_path: Path
    returncode: int | None = None

    def succeeded(self) -> bool:
        return self.returncode == 0


Job = TrainJob | ProcessJob


def plan_training(
    spec: StudySpec,
    root: Path,
    *,
    base_args: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> list[TrainJob]:
    """The jobs still to run, seed by seed (a partial run ends with whole seeds done).

    ``base_args`` are the settings options every job repeats (``--config``, ``--set``).
    """
    jobs: list[TrainJob] = []
    models = trained_rows(spec)
    for seed in seeds or spec.seeds:
        for protocol in spec.protocols:
            transfer = transfers(protocol, ["target"])[0]  # training ignores history_from
            for row in models:
                if seed not in spec.seeds_of(row, seeds):
                    continue
                out = checkpoint_dir(root, transfer, row.name, seed)
                if has_run(out):
                    continue
                # A process per run: one torch thread each, and a crash stays in its log.
                argv = [sys.executable, "-m", "eval.modelprep", *base_args]
                for item in [*spec.set, *row.set]:
                    argv += ["--set", item]
                argv += ["train", "--model", row.model, "--seed", str(seed), "--out", str(out)]
                if transfer.zero_shot:
                    argv += ["--transfer", transfer.spec]
                log_path = root / "logs" / f"{transfer.model_tag}-{row.name}-seed{seed}.log"
                jobs.append(TrainJob(row.name, seed, transfer, out, argv, log_path))
    return jobs


def _run_job(job: Job) -> Job:
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with job.log_path.open("w", encoding="utf-8") as sink:
        job.returncode = subprocess.run(
            job.argv, stdout=sink, stderr=subprocess.STDOUT, check=False
        ).returncode
    return job


def run_training(jobs: Sequence[Job], workers: int) -> list[Job]:
    """Run the jobs in order, ``workers`` at a time; returns the failed ones (their logs say
    why)."""
    if not jobs:
        return []
    failed: list[Job] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(jobs), unit="run", desc="train") as bar,
    ):
        futures = [pool.submit(_run_job, job) for job in jobs]
        for future in as_completed(futures):
            job = future.result()
            bar.update(1)
            if not job.succeeded():
                failed.append(job)
                log.error("%s failed (exit %s): see %s", job.label, job.returncode, job.log_path)
            else:
                log.info("%s done (log %s)", job.label, job.log_path)
    return failed
