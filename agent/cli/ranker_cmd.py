"""``recbridge ranker train|show`` (the learned second stage) and ``recbridge headroom`` (how
much a second stage could gain over a retriever)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import UserError, console, handles_user_errors, state

ranker_app = typer.Typer(
    help="The learned ranker: LightGBM LambdaRank over the retriever's top N.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(ranker_app, name="ranker")
    app.command("headroom")(headroom_command)


def _errors() -> tuple[type[Exception], ...]:
    from agent.items.llm_states import StatesError
    from agent.models.prepare import ModelNotReady
    from agent.rerank.head import HeadError
    from agent.rerank.ranker import RankerError
    from eval.candidates import CandidatesError

    return (StatesError, ModelNotReady, RankerError, HeadError, CandidatesError)


@ranker_app.command("train")
@handles_user_errors
def train_command(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Ranker folder (default: ranker.path or work_dir/rankers/NAME)."),
    ] = None,
    llm_states: Annotated[
        str | None, typer.Option(help="LLM item states as features (a backbone, e.g. smollm2).")
    ] = None,
) -> None:
    """Train the ranker on groups from train rows; settings chosen on valid users."""
    from agent.data.loader import load_dataset
    from agent.rerank.ranker import read_card
    from finetune.ranker import train_ranker

    overrides: dict[str, object] = {}
    if data:
        overrides["data.path"] = data
    if llm_states:
        overrides["ranker.llm_states"] = llm_states
    settings = state(ctx).settings(**overrides)
    try:
        folder = train_ranker(settings, load_dataset(settings.data), out)
    except _errors() as exc:
        raise UserError(str(exc)) from None
    _print_card(folder, read_card(folder).to_dict())


@ranker_app.command("show")
@handles_user_errors
def show_command(
    ctx: typer.Context,
    folder: Annotated[Path | None, typer.Argument(help="Ranker folder.")] = None,
) -> None:
    """What a trained ranker is: valid NDCG@10 per setting tried, feature importance."""
    from agent.rerank.ranker import RankerError, read_card

    path = folder or state(ctx).settings().ranker_dir
    try:
        card = read_card(path)
    except RankerError as exc:
        raise UserError(str(exc)) from None
    _print_card(path, card.to_dict())


def _print_card(folder: Path, card: dict[str, object]) -> None:
    from rich.table import Table

    valid = card["valid"]
    assert isinstance(valid, dict)
    console.print(
        f"ranker {folder}: valid NDCG@10 {valid['best_ndcg10']:.4f} over {valid['users']} "
        f"valid users (the retriever's order: {valid['retriever_ndcg10']:.4f})"
    )
    table = Table("feature", "gain share")
    importance = card["importance"]
    assert isinstance(importance, dict)
    for name, share in sorted(importance.items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{share:.3f}")
    console.print(table)
    console.print(json.dumps(card["train"], indent=1))


@handles_user_errors
def headroom_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="The retriever.")] = "sasrec-hybrid",
    splits: Annotated[str, typer.Option(help="Comma-separated splits.")] = "valid,test",
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
) -> None:
    """Recall@N of the retriever and the NDCG@10 a perfect reranker of its top N reaches,
    per split and slice (short history, domain switch, cold target, domain)."""
    from agent.data.loader import load_dataset
    from agent.models.prepare import prepare_model
    from eval.headroom import headroom, markdown, write_headroom
    from eval.runinfo import run_info

    settings = state(ctx).settings(**({"data.path": data} if data else {}))
    names = [s.strip() for s in splits.split(",") if s.strip()]
    bad = [s for s in names if s not in ("valid", "test")]
    if bad:
        raise UserError(f"--splits: {', '.join(bad)} is not valid or test")
    dataset = load_dataset(settings.data)
    try:
        retriever = prepare_model(model, dataset, settings, train=False).model
        rows = headroom(dataset, settings, retriever, tuple(names))  # type: ignore[arg-type]
    except _errors() as exc:
        raise UserError(str(exc)) from None
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = out or settings.work_dir / "eval" / f"headroom-{model}-{stamp}"
    path = write_headroom(folder, rows, {"model": model, "run": run_info()})
    console.print(markdown(rows, f"Headroom of {model} (sampled-999)"), soft_wrap=True)
    console.print(f"report: {path}")


@ranker_app.command("head")
@handles_user_errors
def head_command(
    ctx: typer.Context,
    llm_states: Annotated[str, typer.Option(help="The LLM item states it reads.")] = "smollm2",
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    out: Annotated[Path | None, typer.Option(help="Head folder.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs.")] = 30,
) -> None:
    """Train the correction head over frozen LLM states (the ranker's groups; the retriever
    logit as a fixed offset); the epoch is chosen on valid users."""
    from agent.data.loader import load_dataset
    from finetune.head import train_head

    settings = state(ctx).settings(
        **{"ranker.llm_states": llm_states, **({"data.path": data} if data else {})}
    )
    try:
        folder = train_head(settings, load_dataset(settings.data), out, epochs=epochs)
    except _errors() as exc:
        raise UserError(str(exc)) from None
    body = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    console.print(
        f"head {folder}: valid NDCG@10 {body['valid']['best_ndcg10']:.4f} "
        f"(epoch 0, the retriever's order: {body['valid']['curve'][0]['valid_ndcg10']:.4f})"
    )
