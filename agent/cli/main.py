"""The ``recbridge`` command line."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from agent.cli import data_cmd, eval_cmd, index_cmd, llm_cmd, run_cmd, score_cmd, train_cmd
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
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Settings file (YAML or TOML).", envvar="RECBRIDGE_CONFIG"
    ),
    set_items: list[str] | None = typer.Option(
        None, "--set", help="Override a setting: section.key=value (repeatable)."
    ),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
) -> None:
    setup_logging(log_level)
    st = state(ctx)
    st.config_file = config
    st.set_items = list(set_items or [])


for module in (data_cmd, index_cmd, train_cmd, eval_cmd, score_cmd, run_cmd, llm_cmd):
    module.register(app)


if __name__ == "__main__":
    app()
