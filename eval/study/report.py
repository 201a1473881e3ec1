"""A study's results over seeds: mean ± sd per row and protocol, Markdown, JSON, PNG."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from eval.plot import plot_study
from eval.study.scoring import METRICS, Cell
from eval.study.spec import StudySpec


@dataclass
class Stat:
    mean: float
    sd: float  # sample standard deviation over seeds; 0 for one value
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), sd, len(values))

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


@dataclass
class RowSummary:
    tag: str
    row: str
    n_seeds: int
    deterministic: bool
    metrics: dict[str, dict[str, Stat]]  # group -> metric -> stat over seeds
    n_users: dict[str, int]
    vs: str | None = None
    delta: Stat | None = None  # paired per-seed overall NDCG@10 minus the reference row's
    seconds_per_epoch: Stat | None = None
    epochs: Stat | None = None
    best_epoch: Stat | None = None


def aggregate(spec: StudySpec, cells: list[Cell]) -> list[RowSummary]:
    by_key: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        by_key.setdefault((cell.tag, cell.row), []).append(cell)
    out: list[RowSummary] = []
    for (tag, row_name), group in by_key.items():
        row = spec.row(row_name)
        metrics = {
            g: {m: Stat.of([c.metrics[g][m] for c in group]) for m in METRICS}
            for g in group[0].metrics
        }
        summary = RowSummary(
            tag,
            row_name,
            len(group),
            group[0].seed is None,
            metrics,
            group[0].n_users,
            vs=row.vs,
        )
        fits = [c.fit for c in group if c.fit]
        if fits:
            summary.seconds_per_epoch = Stat.of([f["seconds_per_epoch"] for f in fits])
            summary.epochs = Stat.of([f["epochs"] for f in fits])
            summary.best_epoch = Stat.of([f["best_epoch"] for f in fits])
        if row.vs is not None:
            ref = {c.seed: c for c in by_key.get((tag, row.vs), [])}
            diffs = [
                c.metrics["overall"]["ndcg@10"]
                - (ref[c.seed] if c.seed in ref else ref[None]).metrics["overall"]["ndcg@10"]
                for c in group
                if c.seed in ref or None in ref
            ]
            summary.delta = Stat.of(diffs) if diffs else None
        out.append(summary)
    order = {r.name: i for i, r in enumerate(spec.rows)}
    return sorted(out, key=lambda s: (s.tag, order[s.row]))


def study_markdown(
    spec: StudySpec,
    summaries: list[RowSummary],
    failed: Sequence[str],
    seeds: Sequence[int] | None = None,
) -> str:
    lines = [f"# Study `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [
        f"Seeds {', '.join(map(str, seeds or spec.seeds))} (mean ± sample sd over the seeds "
        f"that ran; n = seeds); candidates and tie-breaking seeded by {spec.eval_seed} for "
        "every model. "
        f"Shared settings: {', '.join(f'`{s}`' for s in spec.set) or 'defaults'}.",
        "",
    ]
    for tag in dict.fromkeys(s.tag for s in summaries):
        rows = [s for s in summaries if s.tag == tag]
        groups = [g for g in rows[0].metrics if g != "overall"]
        users = ", ".join(f"{g} {rows[0].n_users.get(g, 0)}" for g in groups)
        lines += [f"## {tag} (test users: {users})", ""]
        head = ["row", "n"]
        for g in groups:
            head += [f"{g} HR@10", f"{g} NDCG@10"]
        if len(groups) > 1:
            head += ["overall NDCG@10"]
        head += ["Δ NDCG@10 vs", "s/epoch", "epochs (best)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
        for s in rows:
            cols = [f"`{s.row}`", "det." if s.deterministic else str(s.n_seeds)]
            for g in groups:
                cols += [s.metrics[g]["hr@10"].text(), s.metrics[g]["ndcg@10"].text()]
            if len(groups) > 1:
                cols += [s.metrics["overall"]["ndcg@10"].text()]
            cols += [f"{s.delta.text()} ({s.vs})" if s.delta and s.vs else ""]
            cols += [f"{s.seconds_per_epoch.mean:.1f}" if s.seconds_per_epoch else ""]
            cols += [
                f"{s.epochs.mean:.1f} ({s.best_epoch.mean:.1f})"
                if s.epochs and s.best_epoch
                else ""
            ]
            lines.append("| " + " | ".join(cols) + " |")
        lines.append("")
    notes = [f"- `{r.name}`: {r.note}" for r in spec.rows if r.note]
    if notes:
        lines += ["Rows:", *notes, ""]
    if failed:
        lines += ["Training runs that failed (their cells are empty):", ""]
        lines += [f"- {f}" for f in failed] + [""]
    return "\n".join(lines)


def write_study(
    root: Path,
    spec: StudySpec,
    summaries: list[RowSummary],
    failed: Sequence[str],
    seeds: Sequence[int] | None = None,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    md = root / "study.md"  # and study.json, study.png
    md.write_text(study_markdown(spec, summaries, failed, seeds), encoding="utf-8")

    def stat(s: Stat | None) -> dict[str, float] | None:
        return None if s is None else {"mean": s.mean, "sd": s.sd, "n": s.n}

    body = {
        "study": spec.model_dump(),
        "seeds": list(seeds or spec.seeds),
        "failed": list(failed),
        "rows": [
            {
                "tag": s.tag,
                "row": s.row,
                "n_seeds": s.n_seeds,
                "deterministic": s.deterministic,
                "n_users": s.n_users,
                "metrics": {g: {m: stat(v) for m, v in ms.items()} for g, ms in s.metrics.items()},
                "vs": s.vs,
                "delta_ndcg10": stat(s.delta),
                "seconds_per_epoch": stat(s.seconds_per_epoch),
                "epochs": stat(s.epochs),
                "best_epoch": stat(s.best_epoch),
            }
            for s in summaries
        ],
    }
    (root / "study.json").write_text(json.dumps(body, indent=1), encoding="utf-8")
    panels: dict[str, list[tuple[str, float, float]]] = {}
    for s in summaries:
        stat_ = s.metrics["overall"]["ndcg@10"]
        panels.setdefault(s.tag, []).append((s.row, stat_.mean, stat_.sd))
    if panels:
        plot_study(panels, root / "study.png", f"study {spec.name}: test users")
    return md
