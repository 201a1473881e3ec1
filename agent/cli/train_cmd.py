"""``recbridge train``: fit one recommender and write its checkpoint folder and fit report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import UserError, handles_user_errors, log, state
from agent.models.base import Recommender
from agent.models.checkpoint import FIT_REPORT_FILE
from agent.models.registry import UnknownModelError, recommender_class
from eval.transfer import Transfer, TransferError


def _check_device(device: str | None) -> None:
    if device is None:
        return
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise UserError(f"--device {device!r}: expected cpu or cuda")


def parse_transfer(transfer: str | None, history_from: str) -> Transfer:
    """``--transfer SOURCE:TARGET`` + ``--history-from``; a bad value is a one-line UserError."""
    try:
        return Transfer.parse(transfer, history_from)
    except TransferError as exc:
        raise UserError(str(exc)) from None


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
        transfer: Annotated[
            str | None,
            typer.Option(
                help="Zero-shot SOURCE:TARGET: train on SOURCE sequences only, early stopping "
                "on SOURCE valid users (default: in-domain).",
            ),
        ] = None,
        history_from: Annotated[
            str,
            typer.Option(
                help="Zero-shot test histories: target or source items (recorded; training "
                "does not depend on it).",
            ),
        ] = "target",
    ) -> None:
        """Train MODEL with early stopping on valid NDCG@10; write checkpoint + fit report."""
        _check_device(device)
        spec = parse_transfer(transfer, history_from)
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

        from agent.compute.runtime import ComputeError
        from eval.evaluator import EvalError  # heavy imports only when training
        from eval.transfer import checkpoint_path, train_under_protocol

        out = out or checkpoint_path(settings, model, spec)
        try:
            # The library's train_checkpoint under the protocol (also the study's processes);
            # on Ray Train workers with train.workers > 1.
            report = train_under_protocol(model, settings, out, transfer=transfer)
        except (TransferError, EvalError, ComputeError) as exc:
            raise UserError(str(exc)) from None
        report_path = out / FIT_REPORT_FILE
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
