"""The ``recbridge`` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from agent.cli import (
    data_cmd,
    eval_cmd,
    finetune_cmd,
    index_cmd,
    llm_cmd,
    profile_cmd,
    profile_eval_cmd,
    ranker_cmd,
    recommend_cmd,
    rerank_study_cmd,
    run_cmd,
    score_cmd,
    serve_cmd,
    study_cmd,
    train_cmd,
)
from agent.cli.common import state
from agent.logging_setup import setup_logging

# Nothing may fetch weights or data from a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

app = typer.Typer(
    name="recbridge",
    help="LLM-driven cross-domain recommendation: data, item index, recommenders, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Settings file (YAML or TOML).", envvar="RECBRIDGE_CONFIG"
        ),
    ] = None,
    set_items: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: section.key=value (repeatable)."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR.")
    ] = "INFO",
) -> None:
    setup_logging(log_level)
    st = state(ctx)
    st.config_file = config
    st.set_items = list(set_items or [])


for module in (
    data_cmd,
    index_cmd,
    train_cmd,
    eval_cmd,
    score_cmd,
    run_cmd,
    llm_cmd,
    profile_cmd,
    profile_eval_cmd,
    ranker_cmd,
    recommend_cmd,
    study_cmd,
    finetune_cmd,
    rerank_study_cmd,
    serve_cmd,
):
    module.register(app)


if __name__ == "__main__":
    app()
