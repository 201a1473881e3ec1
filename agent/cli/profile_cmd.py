"""``recbridge profile``: hierarchical LLM profiles of one user (a readable tree, or JSON), or of
many users of a split (concurrent, with a progress bar, per-user tokens/seconds and a JSONL)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from agent.cli.common import UserError, console, state, user_errors
from agent.logging_setup import stderr_console

if TYPE_CHECKING:
    from agent.data.schema import Split
    from agent.profiles.profiler import ProfileRunStats, UserResult
    from agent.profiles.schema import CallInfo, Profile, ProfileTree

log = logging.getLogger("recbridge")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("profile")(profile)


def _call_text(call: CallInfo) -> str:
    flags = [name for name in ("retried", "repaired", "fallback") if getattr(call, name)] + (
        [f"dropped {call.dropped_evidence} ids"] if call.dropped_evidence else []
    )
    cost = f"{call.calls} call(s), {call.prompt_tokens}+{call.completion_tokens} tok, "
    cost += f"{call.latency_s:.1f}s"
    return f"[dim]{cost}{' | ' + ', '.join(flags) if flags else ''}[/dim]"


def _profile_node(node: Tree, profile: Profile) -> None:
    node.add(f"[bold]summary[/bold]: {escape(profile.summary)}")
    for name in ("preferences", "dislikes", "cross_domain_themes", "evidence_item_ids"):
        values: list[str] = getattr(profile, name)
        if values:
            node.add(f"[bold]{name}[/bold]: {escape('; '.join(values))}")


def render_tree(tree: ProfileTree) -> Tree:
    """The profile tree as a rich Tree: cross-domain profile, then each domain and its groups."""
    root = Tree(
        f"[bold]user {escape(tree.user_id)}[/bold] ({tree.split}, {tree.history_len} items) "
        f"{tree.backend}/{escape(tree.model)}{' + ' + escape(tree.adapter) if tree.adapter else ''}"
        f" [dim]{tree.llm_calls} calls, {tree.prompt_tokens}+{tree.completion_tokens} tokens, "
        f"{tree.latency_s:.1f}s, {tree.fallbacks} fallback(s)[/dim]"
    )
    cross = root.add(f"[bold cyan]cross-domain profile[/bold cyan] {_call_text(tree.call)}")
    _profile_node(cross, tree.profile)
    for dom in tree.domains:
        node = root.add(
            f"[bold green]{escape(dom.domain)}[/bold green] ({dom.history_len} items, "
            f"{dom.grouping}) {_call_text(dom.call)}"
        )
        _profile_node(node.add("[bold]profile[/bold]"), dom.profile)
        groups = node.add(f"[bold]groups[/bold] ({len(dom.groups)})")
        for group in dom.groups:
            groups.add(
                f"{group.key} [{len(group.item_ids)} items] {escape(group.text)} "
                f"{_call_text(group.call)}"
            )
    if tree.facts is not None:
        facts = root.add(f"[bold]facts[/bold] (from the history; mode {tree.mode})")
        for dom_facts in tree.facts.domains:
            node = facts.add(f"{escape(dom_facts.domain)} ({dom_facts.items} items)")
            for name in ("brands", "keywords", "kinds", "categories", "repeats"):
                values = [f"{f.value} ({f.count})" for f in getattr(dom_facts, name)]
                if values:
                    node.add(f"{name}: {escape('; '.join(values))}")
            node.add(f"recent: {', '.join(dom_facts.recent)}")
        for link in tree.facts.links:
            ids = "; ".join(f"{d}: {', '.join(i)}" for d, i in link.item_ids.items())
            facts.add(f"link {escape(link.term)} ({link.via}): {ids}")
    templates = root.add("[dim]templates[/dim]")
    for role, ref in tree.templates.items():
        templates.add(f"[dim]{role}: {ref.file} v{ref.version} sha256 {ref.sha256[:12]}[/dim]")
    return root


def _result_row(result: UserResult) -> dict[str, object]:
    row: dict[str, object] = {
        "user_id": result.user_id,
        "ok": result.ok,
        "cached": result.cached,
        "error": result.error,
    }
    if result.tree is not None:
        row["tree"] = result.tree.model_dump(mode="json")
    return row


def _stats_table(stats: ProfileRunStats) -> Table:
    table = Table(title="profiling")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in stats.as_dict().items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    return table


def profile(
    ctx: typer.Context,
    data: Annotated[
        Path | None, typer.Option("--data", help="Data folder (default: data.path).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Profile this one user.")] = None,
    split: Annotated[str, typer.Option("--split", help="train, valid or test.")] = "test",
    users: Annotated[
        int, typer.Option("--users", min=0, help="Without --user: the first N users (0 = all).")
    ] = 0,
    sample: Annotated[
        int,
        typer.Option(
            "--sample",
            min=0,
            help="Without --user: a seeded sample of N users, the ones `recbridge eval --users "
            "N` (and `run --rerank-users N`) evaluate.",
        ),
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a tree.")] = False,
    backend: Annotated[
        str | None, typer.Option("--backend", help="local or openai (llm.backend).")
    ] = None,
    adapter: Annotated[str | None, typer.Option("--adapter", help="LoRA adapter name.")] = None,
    url: Annotated[str | None, typer.Option("--url", help="OpenAI-compatible base URL.")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Many users: JSONL of results (default under work_dir)."),
    ] = None,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Upsert profiles into Chroma `users`.")
    ] = True,
) -> None:
    """LLM4CDSR-style hierarchical profiles: groups -> domain profiles -> cross-domain profile."""
    from agent.profiles.profiler import HierarchicalProfiler
    from agent.profiles.user_store import UserStore
    from agent.service import SERVICE_ERRORS, RecBridgeService
    from agent.store.chroma_store import make_client

    with user_errors():
        if backend not in (None, "local", "openai"):
            raise UserError(f"--backend {backend!r}: expected local or openai")
        if split not in ("train", "valid", "test"):
            raise UserError(f"--split {split!r}: expected train, valid or test")
        if users and sample:
            raise UserError("--users and --sample: give one of them")
        kind: Literal["local", "openai"] | None = backend  # type: ignore[assignment]
        split_name: Split = split  # type: ignore[assignment]
        settings = state(ctx).settings(**{"data.path": str(data) if data else None, "llm.url": url})
        try:
            service = RecBridgeService.from_settings(settings, backend=kind, pipelines=[])
        except SERVICE_ERRORS as exc:
            raise UserError(str(exc)) from None
        dataset = service.data
        pool = dataset.split(split_name)
        if user is not None:
            chosen = [u for u in pool if u.user_id == user]
            if not chosen:
                raise UserError(f"user {user!r} not found in split {split}")
        elif sample:
            from eval.evaluator import select_users

            chosen = select_users(dataset, split_name, sample, settings.seed)
        else:
            chosen = pool[:users] if users else pool
        try:
            embedder = service.embedder
            user_store = UserStore(make_client(settings), settings, embedder) if store else None
            embeddings = service.embeddings
            llm = service.backend  # the model prepared on first use
            out_path = out or settings.profile_cache_dir / f"{split}-{llm.name}.jsonl"
            jsonl = None if user is not None else out_path
            if jsonl is not None:
                jsonl.parent.mkdir(parents=True, exist_ok=True)
                jsonl.write_text("", encoding="utf-8")

            def persist(batch: list[UserResult]) -> None:
                # Per batch, before the next starts: a crash later loses nothing finished.
                if user_store is not None:
                    user_store.upsert([r.tree for r in batch if r.tree is not None])
                if jsonl is not None:
                    with jsonl.open("a", encoding="utf-8") as fh:
                        for result in batch:
                            fh.write(json.dumps(_result_row(result)) + "\n")
                for result in batch:
                    if result.tree is None:
                        log.warning("user %s: failed: %s", result.user_id, result.error)
                    elif not result.cached:
                        t = result.tree
                        log.info(
                            "user %s: %d calls, %d+%d tokens, %.1fs, %d fallback(s)",
                            result.user_id,
                            t.llm_calls,
                            t.prompt_tokens,
                            t.completion_tokens,
                            result.seconds,
                            t.fallbacks,
                        )

            cache = service.profile_cache
            try:
                profiler = HierarchicalProfiler(
                    llm,
                    dataset,
                    settings,
                    embeddings=embeddings,
                    adapter=adapter,
                    cache=cache,
                    on_results=persist,
                )
                with Progress(
                    TextColumn("profiling"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TextColumn("{task.fields[note]}"),
                    console=stderr_console,
                    disable=user is not None,
                ) as bar:
                    task = bar.add_task("profiles", total=len(chosen), note="")
                    failed = fallbacks = 0

                    def advance(batch: list[UserResult]) -> None:
                        nonlocal failed, fallbacks
                        failed += sum(not r.ok for r in batch)
                        fallbacks += sum(r.tree.fallbacks for r in batch if r.tree is not None)
                        note = f"failed {failed}, fallback nodes {fallbacks}"
                        bar.update(task, advance=len(batch), note=note)

                    if settings.compute.engine == "ray" and user is None:
                        from agent.profiles.profile_job import profile_on_ray

                        results, stats = profile_on_ray(profiler, chosen, progress=advance)
                    else:
                        results, stats = profiler.profile_users(chosen, progress=advance)
            finally:
                service.close_caches()
        except SERVICE_ERRORS as exc:
            raise UserError(str(exc)) from None
        if user is not None:
            result = results[0]
            if result.tree is None:
                raise UserError(f"user {user}: {result.error}")
            if as_json:
                sys.stdout.write(result.tree.model_dump_json(indent=2) + "\n")
            else:
                console.print(render_tree(result.tree))
            return
        summary = stats.as_dict()
        (out_path.with_suffix(".stats.json")).write_text(
            json.dumps(summary, indent=2), encoding="utf-8"
        )
        log.info(
            "%d users in %.1fs: %.2f users/min, %.0f tokens/user, %d failed, %d cached, "
            "%d fallback nodes (%d users with a fallback cross profile) -> %s",
            stats.users,
            stats.seconds,
            summary["users_per_min"],
            summary["tokens_per_user"],
            stats.failed,
            stats.cached,
            stats.fallbacks,
            stats.users_with_fallback,
            out_path,
        )
        if as_json:
            sys.stdout.write(json.dumps(summary) + "\n")
        else:
            console.print(_stats_table(stats))
