"""``recbridge index``: embed every item (through the cache) and index it in Chroma."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import UserError, console, state, user_errors

log = logging.getLogger("recbridge")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("index")(index)


def index(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option("--data", help="Data folder (default: data.path).")
    ] = None,
    store_url: Annotated[
        str | None,
        typer.Option("--store-url", help="A `chroma run` server, e.g. http://127.0.0.1:8000."),
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Drop the collection first, then index.")
    ] = False,
) -> None:
    """Embed all items (cached) and upsert the missing ones into the Chroma item index."""
    # Heavy imports here so `recbridge --help` stays fast.
    from agent.compute.runtime import ComputeError
    from agent.data.loader import load_dataset
    from agent.items.embedder import EmbeddingError, make_embedder
    from agent.items.embeddings import item_embeddings
    from agent.store.chroma_store import ItemIndex, StoreError, make_client

    with user_errors():
        settings = state(ctx).settings(
            **{"data.path": str(data) if data else None, "store.url": store_url}
        )
        dataset = load_dataset(settings.data)
        try:
            # Connect first: an unreachable server should fail before minutes of embedding.
            client = make_client(settings)
            embedder = make_embedder(settings)
            started = time.perf_counter()
            embeddings = item_embeddings(dataset, settings, embedder=embedder)
            seconds = time.perf_counter() - started
            log.info(
                "embeddings ready: %d items x %d in %.1fs (%.0f items/s incl. cache reads)",
                len(dataset.catalog),
                embeddings.shape[1],
                seconds,
                len(dataset.catalog) / max(seconds, 1e-9),
            )
            where = settings.store.url or str(settings.store_path)
            item_index = ItemIndex(client, settings, embedder.model_id)
            if rebuild:
                item_index.drop()
            report = item_index.index(dataset, embeddings)
        except (ComputeError, EmbeddingError, StoreError) as exc:
            raise UserError(str(exc)) from exc
        log.info(
            "indexed %d items (%d upserted, %d deleted) in %.1fs (%.0f items/s)",
            report.items,
            report.upserted,
            report.deleted,
            report.seconds,
            report.items_per_s,
        )
        if report.count != report.items:
            raise UserError(
                f"collection {item_index.name} holds {report.count} items, expected {report.items}"
            )
        console.print(
            f"collection [bold]{item_index.name}[/bold] at {where}: {report.count} items "
            f"({report.upserted} upserted, {report.deleted} deleted)",
            soft_wrap=True,
        )
