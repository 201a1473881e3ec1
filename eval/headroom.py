"""Headroom of a second stage over one retriever (``recbridge headroom``).

For each split and slice (``eval/slices.py``): the retriever's NDCG@10, its recall@N (the
target in its top N of the protocol's 1,000 candidates) and the NDCG@10 a perfect reranker of
its top N would reach (the target moved to the first place whenever it is in the top N: that
is recall@N itself). A reranker of the top N can gain at most the difference, and only on the
users whose target the retriever already has.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset, Split
from agent.models.base import Recommender
from eval.evaluator import RankingEvaluator
from eval.metrics import per_user_metrics
from eval.slices import train_counts, user_slices

RECALL_AT: tuple[int, ...] = (10, 20, 50, 100)


@dataclass
class HeadroomRow:
    split: str
    slice: str
    users: int
    ndcg10: float
    recall: dict[int, float]  # recall@N = a perfect reranker of the top N's NDCG@10

    def cells(self) -> list[str]:
        return [
            self.split,
            self.slice,
            str(self.users),
            f"{self.ndcg10:.4f}",
            *(f"{self.recall[n]:.3f}" for n in RECALL_AT),
            f"{self.recall[20] - self.ndcg10:+.3f}",
            f"{self.recall[50] - self.ndcg10:+.3f}",
        ]


HEADER = [
    "split",
    "slice",
    "users",
    "NDCG@10",
    *(f"R@{n}" for n in RECALL_AT),
    "room top20",
    "room top50",
]


def headroom(
    data: Dataset, settings: Settings, model: Recommender, splits: tuple[Split, ...]
) -> list[HeadroomRow]:
    counts = train_counts(data)
    rows: list[HeadroomRow] = []
    for split in splits:
        evaluator = RankingEvaluator(data, settings, split=split, bootstrap=0)
        result = evaluator(model, name=f"{model.name}@{split}")
        ranks = np.asarray(result.ranks)
        ndcg = per_user_metrics(ranks, [10])[:, 1]
        for name, mask in user_slices(data, evaluator.users, counts).items():
            if not mask.any():
                continue
            rows.append(
                HeadroomRow(
                    split=split,
                    slice=name,
                    users=int(mask.sum()),
                    ndcg10=float(ndcg[mask].mean()),
                    recall={n: float((ranks[mask] < n).mean()) for n in RECALL_AT},
                )
            )
    return rows


def markdown(rows: list[HeadroomRow], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(HEADER) + " |"]
    lines.append("|" + "---|" * len(HEADER))
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_headroom(folder: Path, rows: list[HeadroomRow], info: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = {**info, "rows": [asdict(r) for r in rows]}
    (folder / "headroom.json").write_text(json.dumps(body, indent=1), encoding="utf-8")
    path = folder / "headroom.md"
    path.write_text(markdown(rows, f"Headroom of {info.get('model')}"), encoding="utf-8")
    return path
