"""``recbridge study``: train a study's rows with each seed, evaluate, report mean ± sd."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import UserError, console, handles_user_errors, log, state
from agent.config import load_settings
from agent.data.loader import load_dataset


def _seeds(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {value!r}: expected comma-separated integers") from None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("study")
    @handles_user_errors
    def study_command(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(help="Study file (TOML), e.g. eval/studies/*.toml.")],
        seeds: Annotated[
            str | None, typer.Option(help="Comma-separated seeds (default: the file's).")
        ] = None,
        jobs: Annotated[
            int, typer.Option(min=1, help="Training runs at a time (one torch thread each).")
        ] = 2,
        train: Annotated[
            bool, typer.Option(help="Train missing checkpoints (--no-train: report what exists).")
        ] = True,
        data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    ) -> None:
        """Train every row of FILE with each seed (resumable), evaluate all on the same
        candidates, write <work_dir>/studies/<name>/study.md and study.json."""
        from eval.study import (
            StudyError,
            aggregate,
            check_row_settings,
            evaluate_study,
            load_study,
            plan_training,
            run_training,
            study_dir,
            write_study,
        )

        st = state(ctx)
        base_set = [*st.set_items, *([f"data.path={data}"] if data else [])]
        try:
            spec = load_study(file)
            check_row_settings(spec, st.config_file, base_set)
        except StudyError as exc:
            raise UserError(f"{file}: {exc}") from None
        settings = load_settings(st.config_file, set_items=base_set)
        root = study_dir(settings, spec)
        wanted = _seeds(seeds)
        failed: list[str] = []
        if train:
            base_args = ["--config", str(st.config_file)] if st.config_file else []
            for item in base_set:
                base_args += ["--set", item]
            jobs_planned = plan_training(spec, root, base_args=base_args, seeds=wanted)
            log.info(
                "study %s: %d training runs to do (%d at a time), logs in %s",
                spec.name,
                len(jobs_planned),
                jobs,
                root / "logs",
            )
            failed = [j.label for j in run_training(jobs_planned, jobs)]
        cells = evaluate_study(
            spec,
            load_dataset(settings.data),
            root,
            config_file=st.config_file,
            base_set=base_set,
            seeds=wanted,
        )
        summaries = aggregate(spec, cells)
        md = write_study(root, spec, summaries, failed, wanted)
        console.print(md.read_text(encoding="utf-8"), markup=False, highlight=False)
        log.info("study report: %s (and study.json)", md)
        if failed:
            raise typer.Exit(code=1)
