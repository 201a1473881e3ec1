"""Get a recommender ready to score: load its checkpoint, or train it, or say what to run.

This is the one train-or-load function of RecBridge: the CLI (``train``, ``eval``, ``score``,
``recommend``), the study's parallel training processes and the HTTP service all call
``prepare_model`` (or ``train_checkpoint``, its training half). Trained models look for a
checkpoint in this order: the path given, then the default folder
``<work_dir>/checkpoints/<name>/`` (where training writes); without one they are trained only
when the caller allows it (``train=True``), else ``ModelNotReady`` says what to run.

``python -m eval.modelprep [--config F] [--set k=v ...] train --model M --seed S --out DIR
[--transfer SRC:TGT]`` runs ``train_checkpoint`` in a process of its own (the study's jobs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.models.base import FitReport, Recommender, ValidFn
from agent.models.checkpoint import CONFIG_FILE, FIT_REPORT_FILE
from agent.models.registry import build_recommender, recommender_class

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
    train_hint: str = "",
    embeddings: np.ndarray | None = None,
) -> PreparedModel:
    """The model, ready: from ``checkpoint``, the default checkpoint, or trained if allowed.

    Training writes the default checkpoint with its fit report, with early stopping on
    ``valid_fn`` (default: valid NDCG@10 under ``eval.valid_protocol``). ``train_hint`` ends the
    ModelNotReady message (the caller's flag that allows training).
    """
    model = _build(name, data, settings, embeddings)
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
    if valid_fn is None:
        from eval.evaluator import make_valid_fn  # heavy: only when training

        valid_fn = make_valid_fn(data, settings)
    report = model.fit(valid_fn=valid_fn, out=default)
    write_fit_report(default, report, name, settings)
    return PreparedModel(model, "trained", report.checkpoint or default, report)


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
    name: str, settings: Settings, out: Path, *, transfer: str | None = None
) -> FitReport:
    """Train ``name`` under the protocol (in-domain, or zero-shot ``SOURCE:TARGET``) into
    ``out`` with early stopping on valid NDCG@10; writes the checkpoint and its fit report."""
    from agent.data.loader import load_dataset
    from eval.evaluator import make_valid_fn
    from eval.transfer import (
        Transfer,
        TransferError,
        apply_transfer,
        selection_data,
        transfer_settings,
    )

    spec = Transfer.parse(transfer, "target")
    full = load_dataset(settings.data)
    data, dropped = apply_transfer(full, spec)
    if spec.zero_shot and not dropped.users_kept["train"]:
        raise TransferError(f"{spec.label}: no train row has 2 {spec.source} items")
    settings = transfer_settings(settings, spec)
    valid_fn = make_valid_fn(selection_data(full, spec), settings)
    model = recommender_class(name)(data, settings)
    log.info("training %s on %s, %s -> %s", name, settings.data.path, spec.label, out)
    report = model.fit(valid_fn=valid_fn, out=out)
    write_fit_report(out, report, name, settings, transfer=dropped.to_dict())
    return report


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.modelprep")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="set_items", action="append", default=[])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train")
    train.add_argument("--model", required=True)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--transfer", default=None)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """The study's training process: ``train_checkpoint`` with the job's settings."""
    from agent.logging_setup import setup_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("INFO")
    overrides = {"seed": args.seed} if args.seed is not None else {}
    try:
        settings = load_settings(args.config, overrides=overrides, set_items=args.set_items)
        report = train_checkpoint(args.model, settings, args.out, transfer=args.transfer)
    except ValueError as exc:  # ConfigError, DataError, TransferError, UnknownModelError, ...
        log.error("%s", exc)
        return 2
    log.info(
        "%s: %d epochs, best valid NDCG@10 %.4f at epoch %d -> %s",
        args.model,
        report.epochs,
        report.best_valid_ndcg10,
        report.best_epoch,
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
