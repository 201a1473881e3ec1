"""``recbridge llm``: prepare the model folder, serve it with vLLM, list models, generate once."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Literal

import typer
from rich.table import Table

from agent.cli.common import UserError, console, log, state, user_errors

llm_app = typer.Typer(
    help="The instruction LLM: prepare, serve (vLLM), models, generate.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(llm_app, name="llm")


@contextmanager
def _llm_errors() -> Iterator[None]:
    """LLM-layer failures the user can act on become one line and exit code 2."""
    from agent.llm.backend import LLMError
    from agent.llm.model_files import ModelFilesError
    from agent.llm.vllm_server import VLLMServerError

    with user_errors():
        try:
            yield
        except (LLMError, ModelFilesError, VLLMServerError) as exc:
            raise UserError(str(exc)) from None


def _adapter_overrides(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {item!r}: expected NAME=DIR")
        out[name] = str(Path(path).resolve())
    return out


@llm_app.command("prepare")
def prepare(
    ctx: typer.Context,
    dest: Annotated[
        Path | None, typer.Option("--dest", help="Folder (default: llm.model_dir).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Convert again even if present.")] = False,
) -> None:
    """Convert the packaged SmolLM2 GGUF into a plain model folder (once; idempotent)."""
    from agent.llm.model_files import prepare_model

    with _llm_errors():
        settings = state(ctx).settings(**{"llm.model_dir": str(dest) if dest else None})
        prepared = prepare_model(settings.llm_model_dir, force=force)
        verb = f"converted in {prepared.seconds:.1f}s" if prepared.converted else "already there"
        console.print(f"{prepared.path} ({verb}, from {prepared.source})")


@llm_app.command("serve")
def serve(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option("--port", help="Port (llm.port; 0 = free).")] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="A LoRA adapter NAME=DIR (repeatable; adds to config)."),
    ] = None,
) -> None:
    """Start vLLM's OpenAI server on loopback with the model and adapters; Ctrl-C stops it."""
    from agent.llm.vllm_server import VLLMServer

    with _llm_errors():
        st = state(ctx)
        base = st.settings()
        adapters = {k: str(v) for k, v in base.llm.adapters.items()}
        adapters.update(_adapter_overrides(adapter))
        settings = st.settings(**{"llm.adapters": adapters or None})
        server = VLLMServer.from_settings(settings, port=port)

        def _stop(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt  # unwinds the `with` below, which stops the process group

        signal.signal(signal.SIGTERM, _stop)
        try:
            with server:
                names = ", ".join([settings.llm.model, *server.adapters])
                console.print(f"serving {names} at {server.url} (ready in {server.ready_s:.0f}s)")
                console.print(f"log: {server.log_path}; Ctrl-C stops it")
                while server.running:
                    time.sleep(1.0)
                log.error("vLLM exited on its own; see %s", server.log_path)
                raise typer.Exit(code=1)
        except KeyboardInterrupt:
            console.print("stopped")


@llm_app.command("models")
def models(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="OpenAI base URL (llm.url).")] = None,
) -> None:
    """List the models (base and LoRA adapters) an OpenAI-compatible server serves."""
    from agent.llm.openai_backend import OpenAIBackend

    with _llm_errors():
        settings = state(ctx).settings(**{"llm.url": url})
        backend = OpenAIBackend(settings.llm_url, settings.llm.model, settings.llm.api_key)
        table = Table(title=settings.llm_url)
        for column in ("id", "parent", "root"):
            table.add_column(column)
        for card in backend.list_models():
            table.add_row(card["id"], card["parent"] or "", card["root"] or "")
        console.print(table)


@llm_app.command("generate")
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The user message.")],
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="local or openai (llm.backend).")
    ] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="LoRA adapter name.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1)] = None,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", min=0, max=20)] = 0,
    schema: Annotated[
        Path | None, typer.Option("--schema", help="JSON schema file for constrained output.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """One greedy completion, for a quick manual check of a backend and adapter."""
    from agent.llm.factory import make_backend
    from agent.llm.types import GenerationRequest

    with _llm_errors():
        if backend not in (None, "local", "openai"):
            raise UserError(f"--backend {backend!r}: expected local or openai")
        kind: Literal["local", "openai"] | None = backend  # type: ignore[assignment]
        settings = state(ctx).settings()
        req = GenerationRequest.from_prompt(
            prompt,
            system=system,
            max_tokens=max_tokens or settings.llm.max_tokens,
            adapter=adapter,
            top_logprobs=top_logprobs,
            seed=settings.seed,
            json_schema=json.loads(schema.read_text(encoding="utf-8")) if schema else None,
        )
        result = make_backend(settings, kind).generate(req)
        if as_json:
            sys.stdout.write(result.model_dump_json(indent=2) + "\n")
            return
        console.print(result.text, markup=False, highlight=False)
        tps = result.completion_tokens / max(result.latency_s, 1e-9)
        log.info(
            "%s/%s: %d prompt + %d new tokens in %.2fs (%.1f tok/s), finish=%s%s",
            result.backend,
            result.model,
            result.prompt_tokens,
            result.completion_tokens,
            result.latency_s,
            tps,
            result.finish_reason,
            "" if not req.json_schema else f", schema enforced={result.schema_enforced}",
        )


@llm_app.command("states")
def states(
    ctx: typer.Context,
    backbone: Annotated[str, typer.Option(help="LLM whose states are cached.")] = "smollm2",
    max_tokens: Annotated[
        int, typer.Option(min=4, help="Tokens read per item.")
    ] = 24,  # MAX_TOKENS
    batch: Annotated[int, typer.Option(min=1, help="Items per forward pass.")] = 32,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0: default).")] = 1,
    chunk: Annotated[int, typer.Option(min=1, help="Items per part file (resume unit).")] = 512,
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
) -> None:
    """Cache every item's pooled top-layer LLM state (resumable; features for the ranker)."""
    from agent.data.loader import load_dataset
    from agent.items.llm_states import StatesError, compute_item_states

    with _llm_errors():
        try:
            settings = state(ctx).settings(**({"data.path": data} if data else {}))
            folder = compute_item_states(
                load_dataset(settings.data),
                settings,
                backbone,
                max_tokens=max_tokens,
                batch=batch,
                threads=threads,
                chunk=chunk,
            )
        except StatesError as exc:
            raise UserError(str(exc)) from None
    console.print(f"LLM item states ({backbone}) in {folder}")
