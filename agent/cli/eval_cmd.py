"""``recbridge eval``: several recommenders side by side on the same candidates, one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import UserError, console, handles_user_errors, log, state
from agent.data.loader import load_dataset
from agent.models.registry import UnknownModelError
from eval.candidates import CandidatesError
from eval.compare import compare_models
from eval.evaluator import EvalError
from eval.modelprep import ModelNotReady
from eval.report import print_table

DEFAULT_MODELS = "popularity,text-knn,sasrec-id,sasrec-text"
# Problems the user can fix: one line, exit 2 (user_errors handles the shared ones).
EVAL_ERRORS = (UnknownModelError, ModelNotReady, CandidatesError, EvalError, ImportError)


def parse_checkpoints(items: list[str], models: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--checkpoint {item!r}: expected NAME=PATH")
        if name not in models:
            raise UserError(f"--checkpoint {name}: not among --models ({', '.join(models)})")
        out[name] = Path(path)
    return out


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("eval")
    @handles_user_errors
    def eval_command(
        ctx: typer.Context,
        data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
        models: Annotated[str, typer.Option(help="Comma-separated model names.")] = DEFAULT_MODELS,
        checkpoint: Annotated[
            list[str] | None,
            typer.Option(help="NAME=PATH of a checkpoint folder (repeatable)."),
        ] = None,
        protocol: Annotated[
            str | None, typer.Option(help="sampled-999 (default), sampled-100 or full.")
        ] = None,
        split: Annotated[str | None, typer.Option(help="test (default) or valid.")] = None,
        users: Annotated[
            int | None, typer.Option(help="Evaluate a seeded sample of N users (0 = all).")
        ] = None,
        train_missing: Annotated[
            bool,
            typer.Option(
                "--train-missing/--no-train-missing",
                help="Train trained models that have no checkpoint (work_dir/checkpoints/NAME).",
            ),
        ] = True,
        candidates: Annotated[
            Path | None,
            typer.Option(help="Candidates file to reuse or create (default: work_dir)."),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(help="Report folder (default: work_dir/eval/<name or timestamp>)."),
        ] = None,
        name: Annotated[str | None, typer.Option(help="Report folder name.")] = None,
    ) -> None:
        """Evaluate recommenders on the same seeded candidates; writes JSON, Markdown, PNG."""
        overrides: dict[str, Any] = {
            "data.path": str(data) if data else None,
            "eval.protocol": protocol,
            "eval.split": split,
            "eval.users": users,
        }
        settings = state(ctx).settings(**overrides)
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            raise UserError("--models: give at least one model name")
        ckpts = parse_checkpoints(checkpoint or [], names)
        try:
            dataset = load_dataset(settings.data)
            run = compare_models(
                dataset,
                settings,
                names,
                checkpoints=ckpts,
                train_missing=train_missing,
                candidates=candidates,
                out=out,
                name=name,
            )
        except EVAL_ERRORS as exc:
            raise UserError(str(exc)) from None
        print_table(run.results, run.evaluator.ks, console)
        paths = run.paths
        log.info("results: %s (table %s, chart %s)", paths.json, paths.markdown, paths.png)
