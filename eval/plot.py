"""Grouped bar chart of HR@10 / NDCG@10 per domain per model, with bootstrap CI error bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eval.evaluator import EvalResult


def plot_results(
    results: Sequence[EvalResult], path: Path, metrics: Sequence[str] = ("hr@10", "ndcg@10")
) -> Path:
    # Figure + Agg canvas, not pyplot: no global backend switch, safe in threads and tests.
    groups = list(dict.fromkeys(g for r in results for g in r.groups))
    fig = Figure(figsize=(max(6.0, 2.2 * len(groups) * len(metrics)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / max(1, len(results))
    x = np.arange(len(groups))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, res in enumerate(results):
            vals = [res.metrics.get(g, {}).get(metric) for g in groups]
            means = np.array([v.mean if v else np.nan for v in vals])
            lo = np.array([v.lo if v else np.nan for v in vals])
            hi = np.array([v.hi if v else np.nan for v in vals])
            yerr = None
            if np.isfinite(lo).any():
                yerr = np.nan_to_num(np.vstack([means - lo, hi - means]), nan=0.0)
            ax.bar(
                x + (i - (len(results) - 1) / 2) * width,
                means,
                width,
                yerr=yerr,
                capsize=3,
                label=res.model,
            )
        ax.set_xticks(x, groups)
        ax.set_title(metric.upper())
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    if results:
        first = results[0]
        axes[0].legend(fontsize="small")
        fig.suptitle(f"{first.split} split, {first.protocol} (95% bootstrap CI)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_study(panels: dict[str, list[tuple[str, float, float]]], path: Path, title: str) -> Path:
    """One panel per protocol: each row's mean NDCG@10 over seeds with ± 1 sd error bars.

    ``panels``: protocol tag -> [(row, mean, sd)], in the study file's row order.
    """
    fig = Figure(figsize=(4.2 * max(1, len(panels)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (tag, rows) in zip(axes, panels.items(), strict=False):
        y = np.arange(len(rows))[::-1]
        ax.barh(y, [m for _, m, _ in rows], xerr=[s for _, _, s in rows], capsize=3)
        ax.set_yticks(y, [r for r, _, _ in rows], fontsize="small")
        ax.set_title(tag, fontsize="small")
        ax.set_xlabel("NDCG@10 (mean ± sd over seeds)")
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
