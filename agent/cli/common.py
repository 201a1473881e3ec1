"""What every CLI command shares: global options, settings, and clean error exits."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from agent.config import ConfigError, Settings, load_settings
from agent.data.schema import DataError
from agent.logging_setup import stderr_console

console = Console()  # stdout: tables and results
log = logging.getLogger("recbridge")


@dataclass
class AppState:
    config_file: Path | None = None
    set_items: list[str] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        """Settings with this command's flags (dotted keys) applied over file and env."""
        return load_settings(self.config_file, overrides=overrides, set_items=self.set_items)


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppState):
        obj = AppState()
        ctx.find_root().obj = obj
    return obj


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn known input problems into one clear line and exit code 2, not a traceback."""
    try:
        yield
    except (ConfigError, DataError, UserError, FileNotFoundError) as exc:
        # One unwrapped line on stderr, whatever the terminal width: scripts grep it.
        stderr_console.print(f"error: {exc}", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(code=2) from None


def handles_user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of ``user_errors`` for typer commands."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with user_errors():
            return func(*args, **kwargs)

    return wrapper
