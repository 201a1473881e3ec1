"""``recbridge serve``: the HTTP API (chat completions, rerank, recommendations, profiles, item
search) over one long-lived service. Not ``recbridge llm serve``, which starts vLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import UserError, handles_user_errors, state


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("serve")(serve)


@handles_user_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (serve.host; loopback).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (serve.port).")] = None,
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    pipeline: Annotated[
        list[str] | None,
        typer.Option(
            "--pipeline",
            help="A pipeline to serve, RETRIEVER[+RERANKER][+profile] (repeatable; "
            "serve.pipelines). The first is the default.",
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(help="LLM: local or openai (llm.backend).")] = None,
    url: Annotated[str | None, typer.Option(help="OpenAI-compatible LLM URL (llm.url).")] = None,
    train: Annotated[
        bool | None,
        typer.Option("--train/--no-train", help="Train retrievers that have no checkpoint."),
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="Bearer keys, one a line (serve.api_keys_file).")
    ] = None,
) -> None:
    """Serve the HTTP API until Ctrl-C or SIGTERM (requests in flight finish first)."""
    from agent.api.server import run_server
    from agent.service import SERVICE_ERRORS
    from eval.evaluator import make_valid_fn

    if backend not in (None, "local", "openai"):
        raise UserError(f"--backend {backend!r}: expected local or openai")
    overrides: dict[str, Any] = {
        "serve.host": host,
        "serve.port": port,
        "data.path": str(data) if data else None,
        "serve.pipelines": list(pipeline) if pipeline else None,
        "serve.default_pipeline": pipeline[0] if pipeline else None,
        "serve.train_missing": train,
        "serve.api_keys_file": str(api_keys_file) if api_keys_file else None,
        "llm.backend": backend,
        "llm.url": url,
    }
    settings = state(ctx).settings(**overrides)
    try:
        run_server(settings, valid_fn_factory=make_valid_fn)
    except SERVICE_ERRORS as exc:
        raise UserError(str(exc)) from None
