"""Get a recommender ready to score: load its checkpoint, or train it, or say what to run.

This is the one train-or-load function of RecBridge: the CLI (``train``, ``eval``, ``score``,
``recommend``), the study's parallel training processes (``python -m eval.modelprep``), the
fine-tuning pipeline and the HTTP service all call ``prepare_model`` (or ``train_checkpoint``,
its training half). Trained models look for a checkpoint in this order: the path given, then
the default folder ``<work_dir>/checkpoints/<name>/`` (where training writes); without one they
are trained only when the caller allows it (``train=True``), else ``ModelNotReady`` says what
to run.

Early stopping needs a validation function; the evaluation protocol that makes one lives above
the library (``eval.evaluator.make_valid_fn``), so callers pass it in: a ready ``valid_fn``, or
a ``ValidFnFactory`` that is called only when a model really has to be trained.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import FitReport, Recommender, ValidFn
from agent.models.checkpoint import CONFIG_FILE, FIT_REPORT_FILE
from agent.models.registry import build_recommender, recommender_class

log = logging.getLogger(__name__)

# (data, settings) -> the early-stopping ValidFn on that data (eval.evaluator.make_valid_fn).
ValidFnFactory = Callable[[Dataset, Settings], ValidFn]


class ModelNotReady(ValueError):
    """A trained model with no checkpoint and training not allowed; the message says what to do."""


@dataclass
class PreparedModel:
    model: Recommender
    source: str  # "untrained", "checkpoint", "trained"
    checkpoint: Path | None = None
    fit: FitReport | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
        }
        if self.fit is not None:
            fit = asdict(self.fit)
            fit["checkpoint"] = str(fit["checkpoint"]) if fit["checkpoint"] else None
            out["fit"] = fit
        return out


def default_checkpoint(settings: Settings, name: str) -> Path:
    return settings.work_dir / "checkpoints" / name


def is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def _build(
    name: str, data: Dataset, settings: Settings, embeddings: np.ndarray | None
) -> Recommender:
    if embeddings is not None and name == "text-knn":
        # Share the caller's item matrix instead of reading the embedding cache again.
        from agent.models.text_knn import TextKNNRecommender

        return TextKNNRecommender(data, settings, embeddings=embeddings)
    return build_recommender(name, data, settings)


def prepare_model(
    name: str,
    data: Dataset,
    settings: Settings,
    *,
    checkpoint: Path | None = None,
    train: bool = False,
    valid_fn: ValidFn | None = None,
    valid_fn_factory: ValidFnFactory | None = None,
    train_hint: str = "",
    embeddings: np.ndarray | None = None,
) -> PreparedModel:
    """The model, ready: from ``checkpoint``, the default checkpoint, or trained if allowed.

    Training writes the default checkpoint with its fit report, with early stopping on
    ``valid_fn`` (else ``valid_fn_factory(data, settings)``; one of them is required when
    training is allowed). ``train_hint`` ends the ModelNotReady message (the caller's flag that
    allows training).
    """
    model = _build(name, data, settings, embeddings)
    if checkpoint is not None:
        if not checkpoint.exists():
            raise FileNotFoundError(f"checkpoint for {name} not found: {checkpoint}")
        model.load(checkpoint)
        log.info("%s: loaded checkpoint %s", name, checkpoint)
        return PreparedModel(model, "checkpoint", checkpoint, read_fit_report(checkpoint))
    if not model.trainable:
        return PreparedModel(model, "untrained")
    default = default_checkpoint(settings, name)
    if is_checkpoint(default):
        check_checkpoint_loss(model, default, settings)
        model.load(default)
        log.info("%s: loaded checkpoint %s (delete it to train again)", name, default)
        return PreparedModel(model, "checkpoint", default, read_fit_report(default))
    if not train:
        raise ModelNotReady(
            f"{name} is a trained model and has no checkpoint: run `recbridge train --model "
            f"{name}` first (it writes {default}) or pass --checkpoint{train_hint}"
        )
    if valid_fn is None:
        if valid_fn_factory is None:
            # A caller's bug, not the user's: training without early stopping is never meant.
            raise TypeError(f"prepare_model({name!r}, train=True) needs a valid function")
        valid_fn = valid_fn_factory(data, settings)
    log.info("%s: no checkpoint, training now (checkpoint -> %s)", name, default)
    if settings.train.workers > 1:
        # Ray Train is reached from `recbridge train` (eval.transfer), above the library
        log.warning(
            "%s: train.workers=%d is for `recbridge train`; training in this process",
            name,
            settings.train.workers,
        )
    report = model.fit(valid_fn=valid_fn, out=default)
    write_fit_report(default, report, name, settings)
    return PreparedModel(model, "trained", report.checkpoint or default, report)


def checkpoint_loss(path: Path) -> str | None:
    """The ``train.loss`` a checkpoint folder was trained with (``bce`` for checkpoints written
    before the setting existed); None when its config records no training settings."""
    try:
        body = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        train = body["config"]["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(train.get("loss", "bce")) if isinstance(train, dict) else None


def check_checkpoint_loss(model: Recommender, path: Path, settings: Settings) -> None:
    """A checkpoint found where the current settings' model is kept stands for them: one
    trained with another ``train.loss`` would silently score as if it were the model asked
    for (ModelNotReady says how to use or replace it)."""
    if not model.uses_train_loss:
        return
    trained = checkpoint_loss(path)
    wanted = settings.train.loss
    if trained is not None and trained != wanted:
        raise ModelNotReady(
            f"{model.name}: the checkpoint {path} was trained with train.loss={trained}, the "
            f"settings say train.loss={wanted}: delete or move it to train again, or pass "
            f"--set train.loss={trained} to use it"
        )


def read_fit_report(path: Path) -> FitReport | None:
    """The fit report beside a checkpoint (None if absent or unreadable: it is informative)."""
    try:
        body = json.loads((path / FIT_REPORT_FILE).read_text(encoding="utf-8"))
        fields = {f: body[f] for f in FitReport.__dataclass_fields__ if f in body}
        fields["checkpoint"] = path
        return FitReport(**fields)
    except (OSError, ValueError, TypeError):
        return None


def write_fit_report(
    out: Path, report: FitReport, name: str, settings: Settings, **extra: Any
) -> Path:
    """``<out>/fit_report.json``: the fit, the model, data, seed and training settings."""
    body: dict[str, Any] = asdict(report)
    body["checkpoint"] = str(report.checkpoint or out)
    body.update(
        model=name,
        data=str(settings.data.path),
        seed=settings.seed,
        valid_protocol=settings.eval.valid_protocol,
        train=settings.train.model_dump(),
        **extra,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / FIT_REPORT_FILE
    path.write_text(json.dumps(body, indent=1), encoding="utf-8")
    return path


def train_checkpoint(
    name: str,
    data: Dataset,
    settings: Settings,
    out: Path,
    *,
    valid_fn: ValidFn,
    **extra: Any,
) -> FitReport:
    """Train ``name`` on ``data`` into ``out`` with early stopping on ``valid_fn``; writes the
    checkpoint and its fit report (``extra`` goes into the report)."""
    model = recommender_class(name)(data, settings)
    log.info("training %s on %s -> %s", name, settings.data.path, out)
    report = model.fit(valid_fn=valid_fn, out=out)
    write_fit_report(out, report, name, settings, **extra)
    return report
