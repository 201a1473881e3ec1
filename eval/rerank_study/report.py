"""A rerank study's table: per-domain HR@10/NDCG@10, overall NDCG@10, the paired difference
to the reference row with its 95% bootstrap interval, the same on the users whose target the
retriever put in its top N (LlamaRec's subset), and each row's cost (ms and LLM tokens per
user); then the paired difference on each user slice (``eval/slices.py``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.rerank_study.run import RowResult
from eval.rerank_study.spec import RerankStudySpec


def paired_interval(diff: np.ndarray, resamples: int, seed: int) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean per-user difference and its 95% percentile bootstrap."""
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[picks].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(lo), float(hi)


def summarize_rows(
    spec: RerankStudySpec,
    rows: Sequence[RowResult],
    retriever_row: str | None = None,
    slices: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """One dict per row with every figure of the table (also written as JSON)."""
    by_name = {r.name: r for r in rows}
    base = by_name.get(retriever_row) if retriever_row else None
    if base is None:
        base = next((r for r in rows if not r.stats), None)
    top = np.asarray(base.ranks) < spec.top_n if base is not None else None
    out: list[dict[str, Any]] = []
    for row in rows:
        ndcg = row.metric("ndcg@10")
        hr = row.metric("hr@10")
        domains = np.asarray(row.domains)
        entry: dict[str, Any] = {
            "row": row.name,
            "users": len(row.ranks),
            "overall_ndcg@10": float(ndcg.mean()),
            "overall_hr@10": float(hr.mean()),
            "domains": {
                d: {
                    "users": int((domains == d).sum()),
                    "hr@10": float(hr[domains == d].mean()),
                    "ndcg@10": float(ndcg[domains == d].mean()),
                }
                for d in sorted(set(row.domains))
            },
            "fusion": row.fusion,
            "stats": row.stats,
        }
        if top is not None:
            entry["top_n_users"] = int(top.sum())
            entry["top_n_ndcg@10"] = float(ndcg[top].mean()) if top.any() else float("nan")
        ref_name = next((r.vs for r in spec.rows if r.name == row.name), None)
        ref = by_name.get(ref_name) if ref_name else None
        if ref is not None:
            if ref.user_ids != row.user_ids:
                raise ValueError(f"rows {row.name} and {ref.name} were run on other users")
            diff = ndcg - ref.metric("ndcg@10")
            mean, lo, hi = paired_interval(diff, spec.bootstrap, spec.seed)
            entry["vs"] = ref.name
            entry["delta_ndcg@10"] = {"mean": mean, "lo": lo, "hi": hi}
            entry["ratio_ndcg@10"] = float(ndcg.mean() / max(1e-12, ref.metric("ndcg@10").mean()))
            if top is not None and top.any():
                m2, l2, h2 = paired_interval(diff[top], spec.bootstrap, spec.seed)
                entry["top_n_delta_ndcg@10"] = {"mean": m2, "lo": l2, "hi": h2}
            entry["slices"] = {
                name: {
                    "users": int(mask.sum()),
                    "ndcg@10": float(ndcg[mask].mean()),
                    "delta_ndcg@10": dict(
                        zip(
                            ("mean", "lo", "hi"),
                            paired_interval(diff[mask], spec.bootstrap, spec.seed),
                            strict=True,
                        )
                    ),
                }
                for name, mask in (slices or {}).items()
                if mask.any()
            }
            entry["moved"] = {
                "up": int((np.asarray(row.ranks) < np.asarray(ref.ranks)).sum()),
                "down": int((np.asarray(row.ranks) > np.asarray(ref.ranks)).sum()),
            }
        out.append(entry)
    return out


def _delta(d: dict[str, float] | None) -> str:
    if not d:
        return ""
    return f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def markdown(spec: RerankStudySpec, summary: Sequence[dict[str, Any]]) -> str:
    domains = sorted({d for s in summary for d in s["domains"]})
    head = ["row"]
    for d in domains:
        head += [f"{d} HR@10", f"{d} NDCG@10"]
    head += [
        "overall NDCG@10",
        "Δ NDCG@10 vs (95% CI)",
        f"top-{spec.top_n} users NDCG@10",
        f"Δ on top-{spec.top_n} users",
        "fusion w",
        "ms/user",
        "LLM tokens/user",
        "fallback",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [f"`{s['row']}`"]
        for d in domains:
            dom = s["domains"].get(d, {})
            cells += [f"{dom.get('hr@10', float('nan')):.3f}", f"{dom.get('ndcg@10', 0):.4f}"]
        stats = s.get("stats") or {}
        fusion = s.get("fusion") or {}
        cells += [
            f"{s['overall_ndcg@10']:.4f}",
            (f"{_delta(s.get('delta_ndcg@10'))} ({s['vs']})" if s.get("vs") else ""),
            f"{s.get('top_n_ndcg@10', float('nan')):.4f}",
            _delta(s.get("top_n_delta_ndcg@10")),
            f"{fusion['weight']:.1f}" if "weight" in fusion else "",
            f"{1000 * stats['rerank_s_per_user']:.1f}" if stats else "",
            f"{stats.get('tokens_per_user', math.nan):.0f}" if stats else "",
            f"{stats['fallback_rate']:.3f}" if stats else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _slice_lines(summary)
    users = summary[0]["users"] if summary else 0
    top = summary[0].get("top_n_users", 0) if summary else 0
    intro = (
        f"Rerank study `{spec.name}`: {users} {spec.split} users ({top} with the target in the "
        f"retriever's top {spec.top_n}), 999 sampled negatives, retriever `{spec.retriever}`, "
        f"backend {spec.backend}; fusion weights chosen on {spec.valid_users} valid users.\n\n"
    )
    return intro + "\n".join(lines) + "\n"


def _slice_lines(summary: Sequence[dict[str, Any]]) -> list[str]:
    """Per slice: users, and each compared row's NDCG@10 and paired Δ to its reference."""
    compared = [s for s in summary if s.get("slices")]
    if not compared:
        return []
    names = list(compared[0]["slices"])
    head = ["row (vs)", *(f"{n} ({compared[0]['slices'][n]['users']})" for n in names)]
    lines = ["", "Per slice: NDCG@10, then Δ vs the reference row [95% CI]:", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in compared:
        cells = [f"`{s['row']}` ({s['vs']})"]
        for n in names:
            cell = s["slices"].get(n)
            cells.append(f"{cell['ndcg@10']:.4f}, {_delta(cell['delta_ndcg@10'])}" if cell else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(
    root: Path,
    spec: RerankStudySpec,
    rows: Sequence[RowResult],
    extra: dict[str, Any],
    slices: dict[str, np.ndarray] | None = None,
) -> Path:
    summary = summarize_rows(spec, rows, slices=slices)
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(
        json.dumps({"spec": spec.model_dump(mode="json"), "rows": summary, **extra}, indent=1),
        encoding="utf-8",
    )
    path = root / "study.md"
    path.write_text(markdown(spec, summary), encoding="utf-8")
    return path
