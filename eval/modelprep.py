"""Get a recommender ready to score: load its checkpoint, or train it, or say what to run.

Trained models look for a checkpoint in this order: the path given, then the default folder
``<work_dir>/checkpoints/<name>/`` (where training writes); without one they are trained only
when the caller allows it (``train=True``), else ``ModelNotReady`` says what to run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import FitReport, Recommender, ValidFn
from agent.models.checkpoint import CONFIG_FILE
from agent.models.registry import build_recommender

log = logging.getLogger(__name__)


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


def prepare_model(
    name: str,
    data: Dataset,
    settings: Settings,
    *,
    checkpoint: Path | None = None,
    train: bool = False,
    valid_fn: ValidFn | None = None,
    train_hint: str = "",
) -> PreparedModel:
    """The model, ready: from ``checkpoint``, the default checkpoint, or trained if allowed.

    ``train_hint`` ends the ModelNotReady message (the caller's flag that allows training).
    """
    model = build_recommender(name, data, settings)
    if checkpoint is not None:
        if not checkpoint.exists():
            raise FileNotFoundError(f"checkpoint for {name} not found: {checkpoint}")
        model.load(checkpoint)
        log.info("%s: loaded checkpoint %s", name, checkpoint)
        return PreparedModel(model, "checkpoint", checkpoint)
    if not model.trainable:
        return PreparedModel(model, "untrained")
    default = default_checkpoint(settings, name)
    if is_checkpoint(default):
        model.load(default)
        log.info("%s: loaded checkpoint %s (delete it to train again)", name, default)
        return PreparedModel(model, "checkpoint", default)
    if not train:
        raise ModelNotReady(
            f"{name} is a trained model and has no checkpoint: run `recbridge train --model "
            f"{name}` first (it writes {default}) or pass --checkpoint{train_hint}"
        )
    log.info("%s: no checkpoint, training now (checkpoint -> %s)", name, default)
    report = model.fit(valid_fn=valid_fn, out=default)
    return PreparedModel(model, "trained", report.checkpoint or default, report)
