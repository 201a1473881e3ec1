"""``recbridge score``: score candidate lists from a JSONL file (format: ``agent.scoring``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import UserError, handles_user_errors, state
from agent.data.loader import load_dataset
from agent.models.registry import UnknownModelError
from agent.scoring import score_file
from eval.evaluator import make_valid_fn
from eval.modelprep import ModelNotReady, prepare_model


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("score")
    @handles_user_errors
    def score_command(
        ctx: typer.Context,
        model: Annotated[str, typer.Option(help="Recommender name.")],
        input_path: Annotated[
            Path, typer.Option("--input", help="JSONL: user_id, history, candidates.")
        ],
        output_path: Annotated[Path, typer.Option("--output", help="JSONL: user_id, scores.")],
        data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
        checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint folder.")] = None,
        train: Annotated[
            bool, typer.Option(help="Train a trained model now if it has no checkpoint.")
        ] = False,
        batch_size: Annotated[int, typer.Option(min=1, help="Lines per model call.")] = 256,
    ) -> None:
        """Score each line's candidates; bad lines become error lines, never a crash.

        Input lines {"user_id", "history": [ids], "candidates": [ids]} give output lines
        {"user_id", "scores": [one float per candidate]}; unknown candidates score -1e30 and
        are listed in "unknown_candidates", unknown history ids in "unknown_history"; a bad
        line gives {"user_id", "line", "error"}.
        """
        # Checked first: the one input problem that is fatal, before loading anything.
        if not input_path.is_file():
            raise UserError(f"input file not found: {input_path}")
        overrides: dict[str, Any] = {"data.path": str(data) if data else None}
        settings = state(ctx).settings(**overrides)
        dataset = load_dataset(settings.data)
        try:
            prep = prepare_model(
                model,
                dataset,
                settings,
                checkpoint=checkpoint,
                train=train,
                valid_fn=make_valid_fn(dataset, settings) if train else None,
                train_hint=", or pass --train to train it now",
            )
        except (UnknownModelError, ModelNotReady, ImportError) as exc:
            raise UserError(str(exc)) from None
        try:
            score_file(prep.model, input_path, output_path, batch_size=batch_size)
        except OSError as exc:  # unreadable input or unwritable output
            raise UserError(f"cannot score {input_path} -> {output_path}: {exc}") from None
