"""Data-parallel training on Ray Train (``train.workers > 1``).

A ``TorchTrainer`` starts ``train.workers`` workers with a torch.distributed process group
(gloo on CPU, NCCL with ``train.device=cuda``); each runs the same library training path as
a local run (the caller's ``train_fn``, ``eval.transfer.train_under_protocol``) with
``train.workers = 1``. The trainer (agent/models/training.py) sees the process group and
trains data-parallel: each rank its shard of every batch, gradients averaged, rank 0 alone
validating and writing the checkpoint folder ``out``; the others write into a scratch folder.

``train_fn`` is passed in rather than imported: the evaluation protocol (which builds the
early-stopping function) lives above the library, and the library does not import ``eval``.
It must be a module-level function, which Ray pickles by reference.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from agent.compute.runtime import ComputeError, portable_settings, ray_session, require_ray
from agent.config import Settings
from agent.models.base import FitReport
from agent.models.checkpoint import FIT_REPORT_FILE
from agent.models.prepare import read_fit_report

log = logging.getLogger(__name__)


class TrainFn(Protocol):
    """The local training entry point: train ``name`` into ``out``, write its fit report."""

    def __call__(
        self, name: str, settings: Settings, out: Path, *, transfer: str | None = None
    ) -> FitReport: ...


def _run_name(name: str, transfer: str | None) -> str:
    """A new run folder per call: Ray Train resumes a run whose name it finds in storage."""
    tag = f"{name}-{transfer}" if transfer else name
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
    return f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _metrics(report: FitReport) -> dict[str, Any]:
    """The fit report's scalars (what Ray Train records with the run)."""
    body = asdict(report)
    return {k: v for k, v in body.items() if isinstance(v, int | float | bool)}


def _worker_logging(level: str, rank: int) -> None:
    """Our loggers at the driver's level on rank 0 and at WARNING on the others, whose lines
    would repeat rank 0's. Ray Train (V2) has given the root logger its console and log-file
    handlers, which are kept; V1 gives none, so a plain one is added."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in ("agent", "eval"):
        logging.getLogger(name).setLevel(level if rank == 0 else "WARNING")


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the settings, train through ``train_fn``, report."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    _worker_logging(config["log_level"], rank)
    body = config["settings"]
    body["train"]["workers"] = 1  # this process trains; no second trainer from here
    if str(body["train"]["device"]).startswith("cuda"):
        import ray.train.torch

        body["train"]["device"] = str(ray.train.torch.get_device())  # this worker's GPU
    settings = Settings.model_validate(body)
    train_fn: TrainFn = config["train_fn"]
    with tempfile.TemporaryDirectory(prefix=f"recbridge-rank{rank}-") as scratch:
        out = Path(config["out"]) if rank == 0 else Path(scratch)
        report = train_fn(config["name"], settings, out, transfer=config["transfer"])
        metrics = _metrics(report) | {"rank": rank}
        if rank == 0:
            # the checkpoint goes to the run's storage too: the driver's copy where it cannot
            # see ``out`` (a worker on another node)
            checkpoint = ray.train.Checkpoint.from_directory(str(out))
            ray.train.report(metrics, checkpoint=checkpoint)
        else:
            ray.train.report(metrics)  # every worker reports as often as the others


def _failure(exc: BaseException) -> str:
    """The workers' errors, one line each where Ray Train says which rank raised what."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        return "; ".join(
            f"rank {rank}: {type(err).__name__}: {err}" for rank, err in sorted(failures.items())
        )
    return f"{type(exc).__name__}: {exc}"


def _written_since(path: Path, started: float) -> bool:
    try:
        return path.stat().st_mtime >= started - 1.0  # (a coarse file-system clock)
    except OSError:
        return False


def _record_run(out: Path, workers: int, run_dir: Path) -> None:
    """The fit report says how it was trained: the workers ran with ``train.workers = 1``
    (each trains in its own process), the run had ``workers``."""
    path = out / FIT_REPORT_FILE
    body = json.loads(path.read_text(encoding="utf-8"))
    body["train"]["workers"] = workers
    body["ray_train_run"] = str(run_dir)
    path.write_text(json.dumps(body, indent=1), encoding="utf-8")


def train_on_ray(
    name: str,
    settings: Settings,
    out: Path,
    *,
    train_fn: TrainFn,
    transfer: str | None = None,
) -> FitReport:
    """Train ``name`` data-parallel on ``train.workers`` Ray Train workers into ``out``
    (checkpoint and fit report, as ``train_fn`` writes them locally); returns the fit report.

    Each worker takes ``max(1, train.threads)`` CPUs and, with ``train.device=cuda``, a GPU.
    Ray Train's run records go to ``<compute_dir>/train/<run>``. A worker's error raises
    ComputeError with the worker's message.
    """
    require_ray()
    out = out.resolve()
    cfg = settings.train
    use_gpu = cfg.device.startswith("cuda")
    run = _run_name(name, transfer)
    storage = (settings.compute_dir / "train").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "name": name,
        "settings": portable_settings(settings),
        "out": str(out),
        "transfer": transfer,
        "train_fn": train_fn,
        "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
    }
    started = time.time()
    with ray_session(settings):
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig, TrainingFailedError
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            _train_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=cfg.workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": max(1, cfg.threads)},
            ),
            run_config=RunConfig(
                name=run,
                storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
            ),
        )
        log.info(
            "%s: data-parallel on %d Ray Train workers (%s, %d CPU each), run %s",
            name,
            cfg.workers,
            "GPU" if use_gpu else "CPU",
            max(1, cfg.threads),
            storage / run,
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            raise ComputeError(f"training {name} on Ray failed: {_failure(exc)}") from exc
        if result.error is not None:  # the V1 trainer returns its error
            raise ComputeError(f"training {name} on Ray failed: {_failure(result.error)}")
        if not _written_since(out / FIT_REPORT_FILE, started):
            if result.checkpoint is None:
                raise ComputeError(f"training {name} on Ray finished but wrote nothing in {out}")
            log.info("%s: copying the checkpoint from the run's storage to %s", name, out)
            result.checkpoint.to_directory(str(out))
    try:
        _record_run(out, cfg.workers, storage / run)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ComputeError(f"training {name} on Ray: no readable fit report in {out}") from exc
    report = read_fit_report(out)
    if report is None:
        raise ComputeError(f"training {name} on Ray: no readable fit report in {out}")
    log.info(
        "%s: %d workers, %d epochs, best valid NDCG@10 %.4f at epoch %d",
        name,
        cfg.workers,
        report.epochs,
        report.best_valid_ndcg10,
        report.best_epoch,
    )
    return report
