"""Several recommenders side by side on the same users and candidates: one comparison run."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import Recommender, ValidFn
from agent.models.prepare import ModelNotReady, default_checkpoint, is_checkpoint, prepare_model
from agent.models.registry import recommender_class
from agent.pipeline.build import TwoStageSpec, two_stage_factory
from eval.evaluator import EvalResult, RankingEvaluator, make_valid_fn
from eval.report import ReportPaths, write_report
from eval.study.training import ProcessJob, TrainJob, run_training
from eval.transfer import Transfer
from eval.two_stage import TwoStageRow, cost_markdown, evaluate_two_stage, extra_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoStagePlan:
    """Rows of ``retriever`` + each reranker spec (see agent.pipeline.build)."""

    retriever: str
    specs: list[TwoStageSpec]
    backend: Literal["local", "openai"] | None = None


@dataclass
class Comparison:
    results: list[EvalResult]
    models: dict[str, Recommender]
    prepared: dict[str, dict[str, Any]]
    evaluator: RankingEvaluator
    paths: ReportPaths
    two_stage: list[TwoStageRow] = field(default_factory=list)


def check_ready(
    names: list[str], settings: Settings, checkpoints: dict[str, Path], train_missing: bool
) -> None:
    """Fail before any work: unknown names, trained models with no checkpoint and no training."""
    for name in names:
        trainable = recommender_class(name).trainable
        missing = name not in checkpoints and not is_checkpoint(default_checkpoint(settings, name))
        if trainable and missing and not train_missing:
            raise ModelNotReady(
                f"{name} has no checkpoint and --no-train-missing is set: run `recbridge train "
                f"--model {name}` or pass --checkpoint {name}=PATH"
            )


class TrainingFailed(RuntimeError):
    """A training process of ``train_in_processes`` failed; the message names its log."""


def settings_file(settings: Settings) -> Path:
    """These exact settings as a file a process of its own reads (``--config``); JSON is YAML,
    which the settings reader takes as is."""
    logs = settings.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "run-settings.json"
    path.write_text(json.dumps(settings.model_dump(mode="json"), indent=1), encoding="utf-8")
    return path


def train_in_processes(
    names: list[str],
    settings: Settings,
    checkpoints: dict[str, Path],
    jobs: int,
    beside: Sequence[ProcessJob] = (),
) -> list[str]:
    """Train the models that have no checkpoint ``jobs`` at a time, each in a process of its
    own (``python -m eval.modelprep``, one torch thread: the study's training path), into their
    default checkpoints, which ``prepare_model`` then loads; ``beside`` runs in the same pool
    after them (a core left idle by a short training run picks it up). One training at a time
    in this process would leave a core idle on this 2-core machine. Returns the names trained.

    The processes read these exact settings from a file, so each trains as it would here; the
    early-stopping candidates are seeded, so they are the same as in-process. A failed
    ``beside`` job only warns: its work is redone where it is needed.
    """
    todo = [
        n
        for n in names
        if recommender_class(n).trainable
        and n not in checkpoints
        and not is_checkpoint(default_checkpoint(settings, n))
    ]
    if jobs < 2 or (len(todo) < 2 and not beside):
        return []
    config = settings_file(settings)
    prog = [sys.executable, "-m", "eval.modelprep", "--config", str(config), "train"]
    planned: list[TrainJob | ProcessJob] = [
        TrainJob(
            row=name,
            seed=settings.seed,
            transfer=Transfer.parse(None),
            out=default_checkpoint(settings, name),
            argv=[*prog, "--model", name, "--out", str(default_checkpoint(settings, name))],
            log_path=config.parent / f"train-{name}.log",
        )
        for name in todo
    ]
    log.info(
        "in processes, %d at a time: %s (logs in %s)",
        jobs,
        ", ".join([*(f"training {n}" for n in todo), *(j.label for j in beside)]),
        config.parent,
    )
    failed = run_training([*planned, *beside], jobs)
    for job in failed:
        if isinstance(job, ProcessJob):
            log.warning("%s failed (see %s): done later in this process", job.label, job.log_path)
    trains = [j for j in failed if isinstance(j, TrainJob)]
    if trains:
        raise TrainingFailed(
            "training failed: " + "; ".join(f"{j.row} (see {j.log_path})" for j in trains)
        )
    return todo


def compare_models(
    dataset: Dataset,
    settings: Settings,
    names: list[str],
    *,
    checkpoints: dict[str, Path] | None = None,
    train_missing: bool = True,
    candidates: Path | None = None,
    out: Path | None = None,
    name: str | None = None,
    two_stage: TwoStagePlan | None = None,
    extra: dict[str, Any] | None = None,
    preface: str | None = None,
    trained: Sequence[str] = (),
) -> Comparison:
    """Prepare (load or train) each model, evaluate all on one candidate set, write the report.

    ``trained``: models the caller just trained elsewhere (``train_in_processes``), reported as
    trained. With ``two_stage``, its retriever (added to ``names`` if missing) is also
    evaluated with each LLM reranker on the same users and candidates.
    """
    checkpoints = checkpoints or {}
    if two_stage is not None and two_stage.retriever not in names:
        names = [*names, two_stage.retriever]
    check_ready(names, settings, checkpoints, train_missing)
    evaluator = RankingEvaluator(dataset, settings, candidates_path=candidates)
    log.info(
        "evaluating %s on %d %s users, protocol %s",
        ", ".join(names),
        len(evaluator.users),
        evaluator.split,
        evaluator.protocol,
    )
    results: list[EvalResult] = []
    models: dict[str, Recommender] = {}
    prepared: dict[str, dict[str, Any]] = {}
    valid_fns: list[ValidFn] = []

    def shared_valid_fn(data: Dataset, settings: Settings) -> ValidFn:
        # Built on the first model that trains, then shared (its candidates are sampled once).
        if not valid_fns:
            valid_fns.append(make_valid_fn(data, settings))
        return valid_fns[0]

    for model_name in names:
        prep = prepare_model(
            model_name,
            dataset,
            settings,
            checkpoint=checkpoints.get(model_name),
            train=train_missing,
            valid_fn_factory=shared_valid_fn,
        )
        if model_name in trained:
            prep.source = "trained"  # by the caller, just now
        models[model_name] = prep.model
        prepared[model_name] = prep.describe()
        results.append(evaluator(prep.model, name=model_name))
    extra = {
        **(extra or {}),
        "models": prepared,
        "candidates": str(evaluator.candidates.path or "on the fly"),
    }
    rows: list[TwoStageRow] = []
    if two_stage is not None:
        with two_stage_factory(settings, backend=two_stage.backend) as factory:
            rows = evaluate_two_stage(
                evaluator,
                factory,
                two_stage.retriever,
                models[two_stage.retriever],
                two_stage.specs,
            )
            extra["two_stage"] = extra_info(rows, factory)
        results.extend(r.result for r in rows)
    paths = write_report(
        results,
        settings,
        out,
        name=name,
        extra=extra,
        preface=preface,
        appendix=cost_markdown(rows) if rows else None,
    )
    return Comparison(results, models, prepared, evaluator, paths, rows)
