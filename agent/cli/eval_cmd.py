"""``recbridge eval``: several recommenders side by side on the same candidates, one table."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from agent.cli.common import UserError, console, handles_user_errors, log, state
from agent.cli.train_cmd import parse_transfer
from agent.config import Settings
from agent.data.loader import load_dataset
from agent.llm.backend import LLMError
from agent.llm.model_files import ModelFilesError
from agent.models.prepare import ModelNotReady
from agent.models.registry import UnknownModelError
from agent.pipeline.build import TwoStageSpec, parse_specs
from agent.prompts import PromptError
from agent.rerank.registry import RERANKERS
from eval.candidates import CandidatesError
from eval.compare import TwoStagePlan, compare_models
from eval.evaluator import EvalError
from eval.report import print_table
from eval.transfer import (
    TransferError,
    apply_transfer,
    prepare_checkpoints,
    transfer_settings,
)
from eval.two_stage import cost_table

DEFAULT_MODELS = "popularity,text-knn,sasrec-id,sasrec-text"
# Problems the user can fix: one line, exit 2 (user_errors handles the shared ones).
EVAL_ERRORS = (
    UnknownModelError,
    ModelNotReady,
    CandidatesError,
    EvalError,
    TransferError,
    ImportError,
)
LLM_ERRORS = (LLMError, ModelFilesError, PromptError)


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


def llm_backend_kind(backend: str | None) -> Literal["local", "openai"] | None:
    if backend not in (None, "local", "openai"):
        raise UserError(f"--backend {backend!r}: expected local or openai")
    return backend  # type: ignore[return-value]


def reranker_specs(rerankers: str, ablation: bool, settings: Settings) -> list[TwoStageSpec]:
    """``listwise,verbalizer`` -> one spec each (and each without the profile: ``ablation``)."""
    specs = parse_specs(rerankers, profile=settings.rerank.use_profile, ablation=ablation)
    unknown = sorted({s.reranker for s in specs} - set(RERANKERS))
    if unknown:
        raise UserError(f"--rerankers: unknown {', '.join(unknown)}; known: {', '.join(RERANKERS)}")
    return specs


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
        rerankers: Annotated[
            str | None,
            typer.Option(
                help="Two-stage rows: comma-separated LLM rerankers (listwise,verbalizer)."
            ),
        ] = None,
        retriever: Annotated[
            str | None, typer.Option(help="Stage one for --rerankers (default: the first model).")
        ] = None,
        top_n: Annotated[
            int | None, typer.Option(min=1, help="Candidates reranked (rerank.top_n).")
        ] = None,
        profile_ablation: Annotated[
            bool,
            typer.Option(
                "--profile-ablation/--no-profile-ablation",
                help="Each reranker also without the profile in its prompt.",
            ),
        ] = False,
        backend: Annotated[str | None, typer.Option(help="LLM: local or openai.")] = None,
        url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL.")] = None,
        transfer: Annotated[
            str | None,
            typer.Option(
                help="Zero-shot SOURCE:TARGET: models trained on SOURCE sequences only "
                "(checkpoints MODEL@zeroshot-SOURCE-TARGET), TARGET test users (default: "
                "in-domain).",
            ),
        ] = None,
        history_from: Annotated[
            str,
            typer.Option(help="Zero-shot test histories: target or source items."),
        ] = "target",
    ) -> None:
        """Evaluate recommenders on the same seeded candidates; writes JSON, Markdown, PNG."""
        spec = parse_transfer(transfer, history_from)
        overrides: dict[str, Any] = {
            "data.path": str(data) if data else None,
            "eval.protocol": protocol,
            "eval.split": split,
            "eval.users": users,
            "rerank.top_n": top_n,
            "llm.url": url,
        }
        settings = state(ctx).settings(**overrides)
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            raise UserError("--models: give at least one model name")
        ckpts = parse_checkpoints(checkpoint or [], names)
        kind = llm_backend_kind(backend)
        plan = (
            TwoStagePlan(
                retriever or names[0], reranker_specs(rerankers, profile_ablation, settings), kind
            )
            if rerankers
            else None
        )
        try:
            full = load_dataset(settings.data)
            dataset, dropped = apply_transfer(full, spec)
            fits: dict[str, Any] = {}
            if spec.zero_shot:
                settings = transfer_settings(settings, spec)
                ckpts, fits = prepare_checkpoints(
                    full,
                    dataset,
                    settings,
                    [*names, *([plan.retriever] if plan else [])],
                    spec,
                    ckpts,
                    train_missing=train_missing,
                )
                if out is None and name is None:  # never mixed up with an in-domain report
                    name = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{spec.tag}"
            run = compare_models(
                dataset,
                settings,
                names,
                checkpoints=ckpts,
                train_missing=train_missing,
                candidates=candidates,
                out=out,
                name=name,
                two_stage=plan,
                extra={"transfer": {**dropped.to_dict(), "trained": fits}},
                preface=f"Protocol: {spec.label}.",
            )
        except (*EVAL_ERRORS, *LLM_ERRORS) as exc:
            raise UserError(str(exc)) from None
        paths = run.paths
        print_table(run.results, run.evaluator.ks, console)
        if run.two_stage:
            console.print(cost_table(run.two_stage))
        log.info("results: %s (table %s, chart %s)", paths.json, paths.markdown, paths.png)
