"""Logging through rich, to stderr, so stdout stays clean for tables and JSON."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

stderr_console = Console(stderr=True)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=stderr_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("httpx", "chromadb", "sentence_transformers", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
