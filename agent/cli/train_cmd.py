"""``recbridge train``: fit one recommender and write its checkpoint folder and fit report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import UserError, handles_user_errors, log, state
from agent.data.loader import load_dataset
from agent.models.base import Recommender
from agent.models.checkpoint import FIT_REPORT_FILE
from agent.models.registry import UnknownModelError, recommender_class


def _check_device(device: str | None) -> None:
    if device is None:
        return
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise UserError(f"--device {device!r}: expected cpu or cuda")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("train")
    @handles_user_errors
    def train_command(
        ctx: typer.Context,
        model: Annotated[str, typer.Option(help="Model name (see the registry).")] = "sasrec-id",
        data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
        out: Annotated[
            Path | None,
            typer.Option(help="Checkpoint folder (default: work_dir/checkpoints/MODEL)."),
        ] = None,
        epochs: Annotated[int | None, typer.Option(help="Most epochs (train.epochs).")] = None,
        seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
        device: Annotated[str | None, typer.Option(help="cpu or cuda (train.device).")] = None,
    ) -> None:
        """Train MODEL with early stopping on valid NDCG@10; write checkpoint + fit report."""
        _check_device(device)
        overrides: dict[str, Any] = {
            "data.path": str(data) if data else None,
            "train.epochs": epochs,
            "seed": seed,
            "train.device": device,
        }
        settings = state(ctx).settings(**overrides)
        try:
            cls = recommender_class(model)
        except UnknownModelError as exc:
            raise UserError(str(exc)) from None
        if cls.save is Recommender.save:
            log.info("%s has nothing to train (it scores at query time): no checkpoint", model)
            return

        from eval.evaluator import make_valid_fn  # heavy imports only when training
        from eval.modelprep import default_checkpoint

        out = out or default_checkpoint(settings, model)
        dataset = load_dataset(settings.data)
        rec = cls(dataset, settings)
        valid_fn = make_valid_fn(dataset, settings)
        log.info(
            "training %s on %s (early stopping: valid NDCG@10, %s) -> %s",
            model,
            settings.data.path,
            settings.eval.valid_protocol,
            out,
        )
        report = rec.fit(valid_fn=valid_fn, out=out)
        body: dict[str, Any] = asdict(report)
        body["checkpoint"] = str(report.checkpoint or out)
        body.update(
            model=model,
            data=str(settings.data.path),
            seed=settings.seed,
            valid_protocol=settings.eval.valid_protocol,
            train=settings.train.model_dump(),
        )
        report_path = out / FIT_REPORT_FILE
        report_path.write_text(json.dumps(body, indent=1), encoding="utf-8")
        log.info(
            "%s: %d epochs, %.1f s/epoch, best valid NDCG@10 %.4f at epoch %d (%.0f s in all); "
            "checkpoint %s, report %s",
            model,
            report.epochs,
            report.seconds_per_epoch,
            report.best_valid_ndcg10,
            report.best_epoch,
            report.seconds,
            out,
            report_path,
        )
