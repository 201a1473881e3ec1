"""Write evaluation results: JSON (results + config + provenance), Markdown table, PNG chart.

Everything goes under ``<work_dir>/eval/<name or timestamp>/``:
``results.json``, ``results.md``, ``results.png`` and ``ranks.jsonl`` (one line per model and
user: the target's rank, for paired comparisons later).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from agent.config import Settings
from eval.evaluator import EvalResult
from eval.metrics import MetricValue
from eval.runinfo import run_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    json: Path
    markdown: Path
    png: Path
    ranks: Path


def table_metrics(ks: Sequence[int]) -> list[str]:
    """HR@K for every K, NDCG@K for K > 1 (NDCG@1 equals HR@1), MRR."""
    return [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1] + ["mrr"]


def _label(metric: str) -> str:
    return metric.upper() if metric == "mrr" else metric.replace("hr", "HR").replace("ndcg", "NDCG")


def format_value(v: MetricValue | None) -> str:
    if v is None or math.isnan(v.mean):
        return "–"
    if math.isnan(v.lo):
        return f"{v.mean:.4f}"
    return f"{v.mean:.4f} ± {v.half_width:.4f}"


def _groups(results: Sequence[EvalResult]) -> list[str]:
    return list(dict.fromkeys(g for r in results for g in r.groups))


def markdown_table(results: Sequence[EvalResult], ks: Sequence[int]) -> str:
    """One table: a row per model, columns per group (overall + domains) x metric."""
    if not results:
        return "_no results_\n"
    groups, metrics = _groups(results), table_metrics(ks)
    first = results[0]
    sizes = ", ".join(f"{g} {first.n_users_by_group.get(g, 0)}" for g in groups)
    lines = [
        f"Split `{first.split}`, protocol `{first.protocol}`, users: {sizes}. "
        "± is half the width of the 95% bootstrap percentile interval over users.",
        "",
        "| Model | " + " | ".join(f"{g} {_label(m)}" for g in groups for m in metrics) + " |",
        "|---|" + "---:|" * (len(groups) * len(metrics)),
    ]
    for r in results:
        cells = [format_value(r.metrics.get(g, {}).get(m)) for g in groups for m in metrics]
        lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(v: MetricValue | None) -> str:
    # Two lines (mean, then ± half-width) keep the terminal table narrow.
    return format_value(v).replace(" ± ", "\n±")


def rich_table(results: Sequence[EvalResult], ks: Sequence[int]) -> Table:
    """A section per group (overall, then domains) with a row per model: fits 80 columns."""
    metrics = table_metrics(ks)
    title = f"{results[0].split} / {results[0].protocol}" if results else "no results"
    speed = ", ".join(f"{r.model} {r.users_per_s:.0f}" for r in results)
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        caption=f"± = half-width of the 95% bootstrap interval; users/s: {speed}",
    )
    table.add_column("Model", no_wrap=True)
    for m in metrics:
        table.add_column(_label(m), justify="right", no_wrap=True)
    for g in _groups(results):
        users = max(r.n_users_by_group.get(g, 0) for r in results)
        table.add_row(f"[bold]{g}[/] ({users})", *([""] * len(metrics)))
        for i, r in enumerate(results):
            table.add_row(
                r.model,
                *(_cell(r.metrics.get(g, {}).get(m)) for m in metrics),
                end_section=i == len(results) - 1,
            )
    return table


def print_table(
    results: Sequence[EvalResult], ks: Sequence[int], console: Console | None = None
) -> None:
    (console or Console()).print(rich_table(results, ks))


def report_dir(settings: Settings, name: str | None = None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return settings.work_dir / "eval" / (name or stamp)


def write_report(
    results: Sequence[EvalResult],
    settings: Settings,
    out_dir: Path | None = None,
    *,
    name: str | None = None,
    extra: dict[str, Any] | None = None,
    preface: str | None = None,
    appendix: str | None = None,
) -> ReportPaths:
    """Write results.json / results.md / results.png / ranks.jsonl; returns their paths.

    ``preface`` and ``appendix`` are Markdown put before and after the table in results.md.
    """
    from eval.plot import plot_results  # matplotlib only when a report is written

    directory = out_dir or report_dir(settings, name)
    directory.mkdir(parents=True, exist_ok=True)
    ks = sorted(set(settings.eval.ks) | {10})
    paths = ReportPaths(
        directory,
        directory / "results.json",
        directory / "results.md",
        directory / "results.png",
        directory / "ranks.jsonl",
    )
    payload = {
        "created": datetime.now(UTC).isoformat(),
        "seed": settings.seed,
        **run_info(),
        "timings": {
            r.model: {"seconds": r.seconds, "users_per_s": r.users_per_s, "users": r.n_users}
            for r in results
        },
        "results": [r.to_dict() for r in results],
        "settings": settings.model_dump(mode="json"),
        **({"extra": extra} if extra else {}),
    }
    # NaN (no bootstrap) is written as null: strict JSON readers reject NaN.
    paths.json.write_text(json.dumps(_nan_to_none(payload), indent=2) + "\n", encoding="utf-8")
    markdown = markdown_table(results, ks)
    if preface:
        markdown = f"{preface}\n\n{markdown}"
    if appendix:
        markdown = f"{markdown}\n{appendix}"
    paths.markdown.write_text(markdown, encoding="utf-8")
    with paths.ranks.open("w", encoding="utf-8") as fh:
        for r in results:
            for row in r.per_user_rows():
                fh.write(json.dumps(row) + "\n")
    plot_results(results, paths.png)
    log.info("report written to %s", directory)
    return paths


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj
