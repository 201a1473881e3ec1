"""``recbridge finetune data|train|eval``: LoRA adapters for the rerankers (finetune/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import UserError, console, handles_user_errors, state

finetune_app = typer.Typer(
    help="LoRA fine-tuning of the reranker: training data, training, evaluation.",
    no_args_is_help=True,
)


def _overrides(**values: Any) -> dict[str, Any]:
    return {f"finetune.{k}": v for k, v in values.items() if v is not None}


@finetune_app.command("data")
@handles_user_errors
def data_command(
    ctx: typer.Context,
    recipe: Annotated[
        str,
        typer.Option(
            help="random (LlamaRec), hard (retriever top 20 of the domain), hard-sampled "
            "(retriever top 20 of 1,000 as at test) or next-interest (profile adapter)."
        ),
    ] = "random",
    examples: Annotated[int | None, typer.Option(help="Most examples (finetune.max_examples).")] = (
        None
    ),
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
) -> None:
    """Build RECIPE's training examples from train rows only (JSONL + manifest)."""
    from finetune.build import LeakageError
    from finetune.pipeline import make_data

    if recipe not in ("random", "hard", "hard-sampled", "next-interest"):
        raise UserError(
            f"--recipe {recipe!r}: expected random, hard, hard-sampled or next-interest"
        )
    settings = state(ctx).settings(
        **_overrides(max_examples=examples), **{"data.path": str(data) if data else None}
    )
    if recipe == "next-interest":  # the profile adapter's data (finetune/profile_train.py)
        from finetune.profile_train import make_profile_data

        path, made = make_profile_data(settings)
        console.print(
            f"{made.examples} {recipe} examples from {made.source_rows} train rows -> {path}"
        )
        return
    try:
        path, manifest = make_data(settings, recipe)  # type: ignore[arg-type]
    except LeakageError as exc:
        raise UserError(f"training data would leak held-out rows: {exc}") from None
    console.print(
        f"{manifest.examples} {recipe} examples from {manifest.source_rows} train rows "
        f"({manifest.inserted} targets inserted) -> {path}"
    )


@finetune_app.command("train")
@handles_user_errors
def train_command(
    ctx: typer.Context,
    recipe: Annotated[str | None, typer.Option(help="Training data recipe (finetune.recipe).")] = (
        None
    ),
    kind: Annotated[
        str | None, typer.Option(help="verbalizer, listwise (finetune.kind) or profile.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name (default KIND-RECIPE).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (finetune.max_steps).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (finetune.device).")] = None,
    validate: Annotated[
        bool, typer.Option(help="Valid NDCG@10 every finetune.eval_every steps; keep the best.")
    ] = True,
) -> None:
    """Train a LoRA adapter (resumable: run the same command again after a kill)."""
    from finetune.pipeline import FinetuneError, train_adapter

    if kind is not None and kind not in ("verbalizer", "listwise", "profile"):
        raise UserError(f"--kind {kind!r}: expected verbalizer, listwise or profile")
    if recipe is not None and recipe not in ("random", "hard", "hard-sampled"):
        raise UserError(f"--recipe {recipe!r}: expected random, hard or hard-sampled")
    settings = state(ctx).settings(**_overrides(max_steps=steps, device=device))
    if settings.finetune.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {settings.finetune.device}: no CUDA device here")
    if kind == "profile":  # next-interest profile adapter (finetune/profile_train.py)
        from finetune.profile_train import train_profile_adapter

        try:
            made = train_profile_adapter(settings, name=name)
        except FinetuneError as exc:
            raise UserError(str(exc)) from None
        losses = made.card["loss_curve"]
        console.print(
            f"adapter {made.name} -> {made.adapter_dir}: {made.card['steps']} steps, "
            f"{made.card['seconds_per_step']:.1f} s/step, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        )
        return
    try:
        report = train_adapter(
            settings,
            name=name,
            recipe=recipe,  # type: ignore[arg-type]
            kind=kind,
            validate=validate,
        )
    except FinetuneError as exc:
        raise UserError(str(exc)) from None
    card = report.card
    console.print(
        f"adapter {report.name} -> {report.adapter_dir}: {card['steps']} steps, "
        f"{card['seconds_per_step']:.1f} s/step, best valid NDCG@10 "
        f"{card['best_valid_ndcg10']:.4f} at step {card['best_step']}"
    )


@finetune_app.command("export")
@handles_user_errors
def export_command(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(help="A finished training run (its adapter name).")],
    which: Annotated[str, typer.Option(help="last (final weights) or best (valid-chosen).")] = (
        "last"
    ),
    name: Annotated[str | None, typer.Option(help="Name to serve it as (RUN-WHICH).")] = None,
) -> None:
    """Serve the last (or best) adapter of a finished run under its own name."""
    from finetune.pipeline import FinetuneError, export_adapter

    try:
        out = export_adapter(state(ctx).settings(), run, which=which, name=name)
    except FinetuneError as exc:
        raise UserError(str(exc)) from None
    console.print(f"{which} adapter of {run} -> {out}")


@finetune_app.command("eval")
@handles_user_errors
def eval_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option(help="Rerank study file.")] = Path(
        "eval/studies/rerank.toml"
    ),
    rows: Annotated[str | None, typer.Option(help="Comma-separated rows (default all).")] = None,
) -> None:
    """The retriever alone vs base and LoRA rerankers on the same test users (a rerank study:
    cached, resumable; see `recbridge rerank-study`)."""
    from agent.cli.rerank_study_cmd import run_rerank_study

    run_rerank_study(ctx, file, rows, None)


def register(app: typer.Typer) -> None:
    """Add ``recbridge finetune ...`` to the root app."""
    app.add_typer(finetune_app, name="finetune")
