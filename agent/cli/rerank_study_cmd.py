"""``recbridge rerank-study FILE``: LLM-stage rows on one retriever, paired differences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import UserError, console, handles_user_errors, state


def run_rerank_study(ctx: typer.Context, file: Path, rows: str | None, data: Path | None) -> None:
    """Shared by ``recbridge rerank-study`` and ``recbridge finetune eval``."""
    from eval.rerank_study import RerankStudyError, run_study

    st = state(ctx)
    base_set = [*st.set_items, *([f"data.path={data}"] if data else [])]
    names = [n.strip() for n in (rows or "").split(",") if n.strip()]
    try:
        path, _ = run_study(file, config_file=st.config_file, base_set=base_set, only=names)
    except (RerankStudyError, ValueError) as exc:
        raise UserError(str(exc)) from None
    console.print(path.read_text(encoding="utf-8"))
    console.print(f"report: {path} (and study.json beside it)")


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""

    @app.command("rerank-study")
    @handles_user_errors
    def rerank_study_command(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(help="Rerank study file (TOML), eval/studies/.")],
        rows: Annotated[
            str | None, typer.Option(help="Comma-separated row names to run (default all).")
        ] = None,
        data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    ) -> None:
        """Run every row of FILE on the same users and candidates (cached, resumable); write
        <work_dir>/rerank-studies/<name>/study.md and study.json."""
        run_rerank_study(ctx, file, rows, data)
