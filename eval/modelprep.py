"""``python -m eval.modelprep [--config F] [--set k=v ...] train --model M --seed S --out DIR
[--transfer SRC:TGT]``: one training run in a process of its own (the study's jobs,
eval/study/training.py).

Thin over the library: ``eval.transfer.train_under_protocol`` applies the protocol and calls
``agent.models.prepare.train_checkpoint``, the training half of the one train-or-load function.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from agent.config import load_settings

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _settings_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="Settings file.")] = None,
    set_items: Annotated[
        list[str] | None, typer.Option("--set", help="A setting, KEY=VALUE (repeatable).")
    ] = None,
) -> None:
    """A study's training process (settings options come before the command)."""
    ctx.obj = (config, list(set_items or []))


@app.command()
def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="Recommender name.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder.")],
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (settings.seed).")] = None,
    transfer: Annotated[
        str | None, typer.Option("--transfer", help="Zero-shot SOURCE:TARGET.")
    ] = None,
) -> None:
    """Train MODEL into OUT with early stopping; writes the checkpoint and its fit report."""
    from agent.logging_setup import setup_logging
    from eval.transfer import train_under_protocol

    setup_logging("INFO")
    config, set_items = ctx.obj
    overrides = {"seed": seed} if seed is not None else {}
    try:
        settings = load_settings(config, overrides=overrides, set_items=set_items)
        report = train_under_protocol(model, settings, out, transfer=transfer)
    except ValueError as exc:  # ConfigError, DataError, TransferError, UnknownModelError, ...
        log.error("%s", exc)
        raise typer.Exit(code=2) from None
    log.info(
        "%s: %d epochs, best valid NDCG@10 %.4f at epoch %d -> %s",
        model,
        report.epochs,
        report.best_valid_ndcg10,
        report.best_epoch,
        out,
    )


def main() -> None:
    # Study processes never download: the models they need are in the local caches.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    app(prog_name="python -m eval.modelprep")


if __name__ == "__main__":
    main()
