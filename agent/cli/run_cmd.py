"""``recbridge run``: the main job on the embedded defaults, end to end.

data -> item text embeddings (cached) -> Chroma item index -> recommenders (trained, or loaded
from their checkpoints) -> evaluation table, JSON and plot -> one example user.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from agent.cli.common import UserError, console, handles_user_errors, state
from agent.cli.eval_cmd import EVAL_ERRORS
from agent.config import Settings
from agent.data.loader import load_dataset
from agent.data.schema import Dataset, UserSequence
from agent.data.stats import compute_stats
from agent.items.embedder import make_embedder
from agent.items.embeddings import item_embeddings
from agent.models.base import Recommender
from agent.models.text_knn import TextKNNRecommender
from agent.store.chroma_store import ItemIndex, make_client
from eval.compare import Comparison, compare_models
from eval.report import print_table

log = logging.getLogger(__name__)

DEFAULT_MODELS = "popularity,text-knn,sasrec-id,sasrec-text"
EXAMPLE_TOP = 10


def register(app: typer.Typer) -> None:
    app.command("run")(run)


@handles_user_errors
def run(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option(help="Data folder (data.path).")] = None,
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] = DEFAULT_MODELS,
    users: Annotated[int | None, typer.Option(help="Evaluate a seeded sample of N users.")] = None,
    protocol: Annotated[str | None, typer.Option(help="sampled-999|sampled-100|full")] = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs for trained models.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling and training.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
) -> None:
    """Index the items, train or load the recommenders, evaluate them, show one example user."""
    settings = state(ctx).settings(
        **{
            "data.path": str(data) if data else None,
            "eval.users": users,
            "eval.protocol": protocol,
            "train.epochs": epochs,
            "seed": seed,
        }
    )
    names = [n.strip() for n in models.split(",") if n.strip()]
    started = time.perf_counter()
    dataset = load_dataset(settings.data)
    stats = compute_stats(dataset)
    log.info(
        "data %s: %d items, %d users, %d interactions, domains %s",
        settings.data.path,
        stats.items,
        stats.users,
        stats.interactions,
        ", ".join(dataset.domains),
    )
    embeddings = index_items(dataset, settings)
    try:
        comparison = compare_models(dataset, settings, names, out=out, name=None)
    except EVAL_ERRORS as exc:
        raise UserError(str(exc)) from None
    print_table(comparison.results, comparison.evaluator.ks, console)
    log.info("report: %s", comparison.paths.directory)
    show_example(dataset, settings, comparison, embeddings)
    log.info("done in %.0f s", time.perf_counter() - started)


def index_items(dataset: Dataset, settings: Settings) -> np.ndarray:
    """Embed every item (cached) and make sure the Chroma index holds them all."""
    embeddings = item_embeddings(dataset, settings)
    index = ItemIndex(make_client(settings), settings, make_embedder(settings).model_id)
    report = index.index(dataset, embeddings)
    log.info(
        "Chroma collection %s: %d items (%d written now, %.0f items/s)",
        index.name,
        report.count,
        report.upserted,
        report.items_per_s,
    )
    return embeddings


def _best_trained(comparison: Comparison) -> tuple[str, Recommender] | None:
    trained = [r for r in comparison.results if comparison.models[r.model].trainable]
    if not trained:
        return None
    best = max(trained, key=lambda r: r.primary)
    return best.model, comparison.models[best.model]


def show_example(
    dataset: Dataset, settings: Settings, comparison: Comparison, embeddings: np.ndarray
) -> None:
    """One evaluated user end to end: history, target, Chroma retrieval, best model's list."""
    user: UserSequence = comparison.evaluator.users[0]
    target = user.target
    assert target is not None  # evaluated users are valid/test rows
    domain = dataset.domain_of(target)
    history = Table(title=f"user {user.user_id}: last items of {len(user.history)}", box=None)
    history.add_column("#", justify="right")
    history.add_column("domain")
    history.add_column("title")
    for pos, item_id in list(enumerate(user.history))[-EXAMPLE_TOP:]:
        item = dataset.items[item_id]
        history.add_row(str(pos), item.domain, item.title[:90])
    console.print(history)
    console.print(f"held-out target ({domain}): {dataset.items[target].title[:90]}")

    knn = TextKNNRecommender(dataset, settings, embeddings=embeddings)
    lists: dict[str, list[str]] = {
        "text-knn (Chroma)": [i for i, _ in knn.retrieve(user.history, domain, EXAMPLE_TOP)]
    }
    best = _best_trained(comparison)
    if best is not None:
        name, model = best
        seen = set(user.history)
        pool = [dataset.catalog.ids[i - 1] for i in dataset.catalog.domain_items(domain)]
        pool = [i for i in pool if i not in seen]
        scores = model.score([user.history], [pool])[0]
        order = np.argsort(-scores, kind="stable")[:EXAMPLE_TOP]
        lists[f"{name} (full {domain} catalogue)"] = [pool[int(i)] for i in order]
    for title, items in lists.items():
        table = Table(title=title, box=None)
        table.add_column("rank", justify="right")
        table.add_column("title")
        table.add_column("")
        for rank, item_id in enumerate(items, start=1):
            mark = "<- target" if item_id == target else ""
            table.add_row(str(rank), dataset.items[item_id].title[:90], mark)
        console.print(table)
