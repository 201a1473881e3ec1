"""``recbridge recommend``: one user's list, end to end (history, profile, retrieved, reranked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from agent.cli.common import UserError, console, handles_user_errors, state
from agent.data.schema import display_title

if TYPE_CHECKING:
    from agent.data.schema import Dataset
    from agent.pipeline.recommend import ListedItem, Recommendation

SHOWN_HISTORY = 10


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("recommend")(recommend)


def _shown(title: str) -> str:
    """A catalogue title for the terminal: cut at a word boundary, rich markup escaped."""
    return escape(display_title(title, 80))


def _list_table(
    title: str,
    items: list[ListedItem],
    target: str | None,
    reasons: list[str] | None = None,
) -> Table:
    table = Table(title=title, box=None, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("retrieved", justify="right")
    table.add_column("")
    if reasons is not None:
        table.add_column("why")
    for rank, item in enumerate(items, start=1):
        mark = "<- target" if item.item_id == target else ""
        row = [str(rank), _shown(item.title), str(item.retrieval_rank), mark]
        if reasons is not None:
            row.append(escape(reasons[rank - 1]))
        table.add_row(*row)
    return table


def render_recommendation(
    rec: Recommendation,
    data: Dataset,
    target: str | None = None,
    reasons: list[str] | None = None,
) -> Group:
    """History, profile, the retrieved list and the final list (with ``reasons``, one per
    final item, when given) as rich renderables."""
    history = Table(
        title=f"user {escape(rec.user_id)}: newest {SHOWN_HISTORY} of {len(rec.history)} items",
        box=None,
        title_justify="left",
    )
    history.add_column("#", justify="right")
    history.add_column("domain")
    history.add_column("title")
    for pos, item_id in list(enumerate(rec.history))[-SHOWN_HISTORY:]:
        item = data.items[item_id]
        history.add_row(str(pos), item.domain, _shown(item.title))
    parts: list[object] = [history]
    if rec.profile is not None:
        p = rec.profile.profile
        lines = [f"[bold]profile[/bold] ({rec.profile.backend}/{escape(rec.profile.model)}):"]
        lines.append(f"  {escape(p.summary)}")
        if p.preferences:
            lines.append(f"  likes: {escape('; '.join(p.preferences))}")
        if p.cross_domain_themes:
            lines.append(f"  cross-domain: {escape('; '.join(p.cross_domain_themes))}")
        parts.append("\n".join(lines))
    if target is not None:
        parts.append(f"held-out target: {_shown(data.items[target].title)}")
    if rec.reranker is None:
        title = f"retrieved by {rec.retriever} ({rec.domain})"
        parts.append(_list_table(title, rec.items, target, reasons))
    else:
        title = f"retrieved by {rec.retriever} ({rec.domain})"
        parts.append(_list_table(title, rec.retrieved, target))
        note = " [red](fallback: retrieval order)[/red]" if rec.fallback else ""
        parts.append(_list_table(f"reranked by {rec.reranker}{note}", rec.items, target, reasons))
        if rec.reason:
            parts.append(f"reason: {escape(rec.reason)}")
    cost = ", ".join(f"{k} {v:.1f}s" for k, v in rec.seconds.items())
    parts.append(f"[dim]{cost}[/dim]")
    return Group(*parts)  # type: ignore[arg-type]


@handles_user_errors
def recommend(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="A user id of --split.")] = None,
    history: Annotated[
        str | None, typer.Option("--history", help="Comma-separated item ids, oldest first.")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data folder (data.path).")] = None,
    split: Annotated[str, typer.Option("--split", help="Where --user's history comes from.")] = (
        "test"
    ),
    domain: Annotated[
        str | None, typer.Option("--domain", help="Target domain (default: the newest item's).")
    ] = None,
    retriever: Annotated[str, typer.Option("--retriever", help="Stage-one model.")] = "text-knn",
    reranker: Annotated[
        str, typer.Option("--reranker", help="listwise, verbalizer or none.")
    ] = "listwise",
    top_n: Annotated[int | None, typer.Option("--top-n", min=1, help="Retrieved.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Shown.")] = 10,
    use_profile: Annotated[
        bool, typer.Option("--profile/--no-profile", help="Profile the user for the prompt.")
    ] = True,
    backend: Annotated[str | None, typer.Option(help="local or openai (llm.backend).")] = None,
    url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recommend for a user of the data (--user) or a raw history (--history)."""
    from agent.rerank.registry import LEARNED_RERANKERS, RERANKERS
    from agent.service import SERVICE_ERRORS, PipelineSpec, RecBridgeService

    if (user is None) == (history is None):
        raise UserError("give exactly one of --user and --history")
    if reranker not in (*RERANKERS, "none"):
        raise UserError(f"--reranker {reranker!r}: expected {', '.join(RERANKERS)} or none")
    if backend not in (None, "local", "openai"):
        raise UserError(f"--backend {backend!r}: expected local or openai")
    if split not in ("train", "valid", "test"):
        raise UserError(f"--split {split!r}: expected train, valid or test")
    kind: Literal["local", "openai"] | None = backend  # type: ignore[assignment]
    settings = state(ctx).settings(
        **{
            "data.path": str(data) if data else None,
            "llm.url": url,
            "rerank.top_n": top_n,
        }
    )
    try:
        service = RecBridgeService.from_settings(settings, backend=kind, pipelines=[])
        dataset = service.data
        target: str | None = None
        if user is not None:
            found = [u for u in dataset.split(split) if u.user_id == user]  # type: ignore[arg-type]
            if not found:
                raise UserError(f"user {user!r} not found in split {split}")
            items = list(found[0].history)
            target = found[0].target
        else:
            items = [i.strip() for i in (history or "").split(",") if i.strip()]
        # A learned second stage reads no profile and reorders the list length it learned.
        learned = reranker in LEARNED_RERANKERS
        spec = PipelineSpec(
            retriever, None if reranker == "none" else reranker, use_profile and not learned
        )
        rec = service.run(
            service.arecommendation(
                spec,
                items,
                user_id=user,
                domain=domain,
                top_k=top_k,
                top_n=top_n if learned else settings.rerank.top_n,
            )
        )
        reasons = service.item_reasons(rec, spec, rec.fallback_kind())
    except SERVICE_ERRORS as exc:
        raise UserError(str(exc)) from None
    if as_json:
        body = rec.model_dump(mode="json")
        body["reasons"] = [{"reason": t, "because": b} for t, b in reasons]
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    else:
        shown = [text for text, _ in reasons]
        console.print(render_recommendation(rec, dataset, target, shown))
