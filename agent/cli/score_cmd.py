"""``recbridge score``: score candidate lists from a JSONL file (format: ``agent.scoring``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from agent.cli.common import UserError, handles_user_errors, log, state
from agent.rerank.registry import RERANKERS
from agent.scoring import score_file
from agent.service import SERVICE_ERRORS, RecBridgeService
from eval.evaluator import make_valid_fn


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
        reranker: Annotated[
            str | None,
            typer.Option(help="listwise or verbalizer: the LLM reorders the model's top N."),
        ] = None,
        top_n: Annotated[
            int | None, typer.Option(min=1, help="With --reranker: how many (rerank.top_n).")
        ] = None,
        use_profile: Annotated[
            bool, typer.Option("--profile/--no-profile", help="With --reranker: profile users.")
        ] = True,
        backend: Annotated[str | None, typer.Option(help="LLM: local or openai.")] = None,
    ) -> None:
        """Score each line's candidates; bad lines become error lines, never a crash.

        Input lines {"user_id", "history": [ids], "candidates": [ids]} give output lines
        {"user_id", "scores": [one float per candidate]}; unknown candidates score -1e30 and
        are listed in "unknown_candidates", unknown history ids in "unknown_history"; a bad
        line gives {"user_id", "line", "error"}.

        With --reranker the two-stage system scores: the model ranks each list, the LLM reorders
        its top N, which then score above the rest (whose scores are the model's).
        """
        # Checked first: the one input problem that is fatal, before loading anything.
        if not input_path.is_file():
            raise UserError(f"input file not found: {input_path}")
        if reranker is not None and reranker not in RERANKERS:
            raise UserError(f"--reranker {reranker!r}: expected {', '.join(RERANKERS)}")
        if backend not in (None, "local", "openai"):
            raise UserError(f"--backend {backend!r}: expected local or openai")
        kind: Literal["local", "openai"] | None = backend  # type: ignore[assignment]
        overrides: dict[str, Any] = {
            "data.path": str(data) if data else None,
            "rerank.top_n": top_n,
        }
        settings = state(ctx).settings(**overrides)
        if reranker is not None and settings.compute.engine == "ray":
            raise UserError(
                "--reranker with compute.engine=ray: two-stage scoring runs on the local engine "
                "only for now (profile the users on Ray first: `recbridge profile`; the rerank "
                "and profile caches are local files)"
            )
        try:
            service = RecBridgeService.from_settings(
                settings, backend=kind, pipelines=[], valid_fn_factory=make_valid_fn
            )
            retriever = service.retriever(
                model,
                train=train,
                checkpoint=checkpoint,
                train_hint=", or pass --train to train it now",
            )
            if reranker is None and settings.compute.engine == "ray":
                from agent.service.score_job import score_file_on_ray

                score_file_on_ray(
                    retriever,
                    settings,
                    input_path,
                    output_path,
                    checkpoint=checkpoint,
                    batch_size=batch_size,
                )
                return
            if reranker is None:
                score_file(retriever, input_path, output_path, batch_size=batch_size)
                return
            try:
                system = service.two_stage(retriever, reranker, use_profile)
                # Small batches: each is one round of LLM requests, cached when it finishes.
                score_file(
                    system,
                    input_path,
                    output_path,
                    batch_size=min(batch_size, settings.rerank.batch_users),
                )
            finally:
                service.close_caches()
            log.info("two-stage scoring: %s", system.stats.as_dict())
        except OSError as exc:  # unreadable input or unwritable output
            raise UserError(f"cannot score {input_path} -> {output_path}: {exc}") from None
        except SERVICE_ERRORS as exc:
            raise UserError(str(exc)) from None
        except ImportError as exc:  # a model whose optional dependency is missing
            raise UserError(str(exc)) from None
