"""``recbridge profile-eval``: profile retrieval (eval/profile_retrieval.py): history titles vs
next-interest profiles vs hierarchical profile trees (free, grounded, facts) as Chroma
queries, and the trees' faithfulness (eval/profile_faithfulness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agent.cli.common import UserError, console, handles_user_errors, log, state

if TYPE_CHECKING:
    from eval.profile_retrieval import SourceResult


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""
    app.command("profile-eval")(profile_eval)


@handles_user_errors
def profile_eval(
    ctx: typer.Context,
    users: Annotated[int, typer.Option(help="Seeded sample of N users of the split (0 = all).")] = (
        100
    ),
    split: Annotated[str, typer.Option(help="test or valid.")] = "test",
    sources: Annotated[
        str,
        typer.Option(
            help="Comma-separated: titles; next-interest profiles base, lora, target-rule (an "
            "oracle); profile trees free, grounded, facts (checked for faithfulness)."
        ),
    ] = "titles,free,grounded,facts",
    adapter: Annotated[
        str | None, typer.Option(help="Profile adapter name (profile.next.adapter).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="LLM: local or openai (llm.backend).")] = None,
    cached_only: Annotated[
        bool,
        typer.Option(
            "--cached-only",
            help="Only the sampled users whose LLM profile trees are all cached (a partial "
            "run, reported as such): no LLM call.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: work_dir/profile_retrieval/<split>-<N>)."),
    ] = None,
) -> None:
    """Embed each user's query (titles or a profile), search the target's domain in Chroma,
    report HR@10/HR@50/NDCG@10 of the held-out target; check the profile trees' faithfulness
    (cached, resumable)."""
    from agent.data.loader import load_dataset
    from agent.llm.backend import LLMError
    from agent.llm.model_files import ModelFilesError
    from agent.prompts import PromptError
    from eval.evaluator import EvalError
    from eval.profile_retrieval import ProfileEvalError, ProfileRetrieval, write_report

    if split not in ("test", "valid"):
        raise UserError(f"--split {split!r}: expected test or valid")
    if backend not in (None, "local", "openai"):
        raise UserError(f"--backend {backend!r}: expected local or openai")
    settings = state(ctx).settings(**{"llm.backend": backend, "profile.next.adapter": adapter})
    names = [s.strip() for s in sources.split(",") if s.strip()]
    try:
        run = ProfileRetrieval(
            load_dataset(settings.data),
            settings,
            users=users,
            split=split,  # type: ignore[arg-type]
            sources=names,
            cached_only=cached_only,
        )
        report = run.run()
    except (ProfileEvalError, EvalError, LLMError, ModelFilesError, PromptError) as exc:
        raise UserError(str(exc)) from None
    folder = out or run.out_root / f"{split}-{report.users}"
    json_path, md_path = write_report(report, folder)
    table = Table(title=f"profile retrieval, {report.users} {split} users (95% CI)")
    for column in ("source", "HR@10", "HR@50", "NDCG@10", "NDCG@10 - titles", "fallbacks"):
        table.add_column(column)
    for row in report.sources:
        m, d = row.metrics, row.paired["ndcg@10"]
        table.add_row(
            row.source,
            f"{m['hr@10']['mean']:.4f}",
            f"{m['hr@50']['mean']:.4f}",
            f"{m['ndcg@10']['mean']:.4f} [{m['ndcg@10']['lo']:.4f}, {m['ndcg@10']['hi']:.4f}]",
            "-" if row.source == "titles" else f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]",
            str(row.fallbacks),
        )
    console.print(table)
    trees = [row for row in report.sources if row.faithfulness is not None]
    if trees:
        console.print(_faithfulness_table(trees, report.users, split))
    log.info("profile retrieval: %s, %s", json_path, md_path)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _faithfulness_table(rows: list[SourceResult], users: int, split: str) -> Table:
    table = Table(title=f"faithfulness of the profile trees, {users} {split} users")
    columns = (
        "profiles",
        "evidence ids valid",
        "attributes supported",
        "contradictions",
        "repeated sentences",
        "words in no title",
        "naming no fact",
        "fallback nodes",
        "tokens/profile",
        "s/profile",
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        f = row.faithfulness
        assert f is not None
        table.add_row(
            row.source,
            f"{_pct(f['evidence_valid'])} of {f['cited_ids']}",
            f"{_pct(f['attributes_supported'])} of {f['named_attributes']}",
            str(f["contradictions"]),
            str(f["repeated_sentences"]),
            str(f["unknown_words"]),
            _pct(f["silent_summaries"]),
            _pct(f["fallback_rate"]),
            f"{f['tokens_per_profile']:.0f}",
            "-" if f["seconds_per_profile"] is None else f"{f['seconds_per_profile']:.1f}",
        )
    return table
