"""Two-stage rows for a comparison: the retriever alone vs retriever + each LLM reranker, on
the same users and candidates, with what the reranking cost and how its answers went."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from agent.models.base import Recommender
from agent.pipeline.build import TwoStageFactory, TwoStageSpec
from eval.evaluator import EvalResult, RankingEvaluator

log = logging.getLogger(__name__)

# Answer-analysis counts shown per row (RecLM-eval style), as rates per LLM answer.
ANALYSIS_COLUMNS = ("wrong_format", "repeated", "not_in_candidates", "history_copied", "missing")


@dataclass
class TwoStageRow:
    label: str
    result: EvalResult
    describe: dict[str, Any]
    stats: dict[str, Any]


def evaluate_two_stage(
    evaluator: RankingEvaluator,
    factory: TwoStageFactory,
    retriever_name: str,
    retriever: Recommender,
    specs: Sequence[TwoStageSpec],
) -> list[TwoStageRow]:
    """Each spec on the evaluator's users; reranked lists are cached as batches finish."""
    rows: list[TwoStageRow] = []
    batch = factory.settings.rerank.batch_users
    for spec in specs:
        system = factory.build(retriever, spec)
        label = spec.label(retriever_name)
        log.info(
            "two-stage %s: %d users, top %d reranked", label, len(evaluator.users), system.top_n
        )
        result = evaluator(system, name=label, batch_users=batch)
        stats = system.stats.as_dict()
        log.info(
            "%s: %.1f s/user rerank, %.0f tokens/user, fallback rate %.3f (%d cached)",
            label,
            stats["rerank_s_per_user"],
            stats["tokens_per_user"],
            stats["fallback_rate"],
            stats["cached"],
        )
        rows.append(TwoStageRow(label, result, system.describe(), stats))
    return rows


def extra_info(rows: Sequence[TwoStageRow], factory: TwoStageFactory) -> dict[str, Any]:
    """For the report's ``extra``: the LLM used and each row's description and costs."""
    llm = factory.settings.llm
    return {
        "llm": {
            "backend": factory.backend.name,
            "model": factory.backend.model,
            "adapter": factory.settings.rerank.adapter,
            "url": factory.settings.llm_url if factory.backend.name == "openai" else None,
            "max_tokens": llm.max_tokens,
        },
        "rows": {r.label: {"describe": r.describe, "stats": r.stats} for r in rows},
    }


def _rate(stats: dict[str, Any], key: str) -> str:
    answers = max(1, int(stats["analysis"]["answers"]))
    return f"{stats['analysis'][key] / answers:.2f}"


def cost_table(rows: Sequence[TwoStageRow]) -> Table:
    """Seconds and tokens per user, fallback rate and answer-analysis rates per row."""
    table = Table(title="LLM reranking: cost and answer analysis (rates per answer)")
    table.add_column("row")
    for col in ("s/user", "profile s/user", "tokens/user", "fallback", *ANALYSIS_COLUMNS):
        table.add_column(col, justify="right")
    for row in rows:
        s = row.stats
        table.add_row(
            row.label,
            f"{s['rerank_s_per_user']:.2f}",
            f"{s['profile_s_per_user']:.1f}" if s["profiled_now"] else "cached/none",
            f"{s['tokens_per_user']:.0f}",
            f"{s['fallback_rate']:.3f}",
            *(_rate(s, c) for c in ANALYSIS_COLUMNS),
        )
    return table


def cost_markdown(rows: Sequence[TwoStageRow]) -> str:
    head = ["row", "s/user", "tokens/user", "fallback rate", *ANALYSIS_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        s = row.stats
        cells = [
            row.label,
            f"{s['rerank_s_per_user']:.2f}",
            f"{s['tokens_per_user']:.0f}",
            f"{s['fallback_rate']:.3f}",
            *(_rate(s, c) for c in ANALYSIS_COLUMNS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
