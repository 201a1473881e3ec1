"""The trained second stages (learned rankers, correction heads), the best of them on valid
users, and its row beside its retriever's on the evaluation's users (``make run``).

Each trained stage is a folder with a card that records its valid NDCG@10 (over every valid
user, chosen there); nothing here reads a test figure to choose.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from agent.config import Settings
from agent.models.base import Recommender
from agent.pipeline.two_stage import TwoStageRecommender
from agent.rerank.features import HISTORY_ITEMS
from agent.rerank.registry import make_reranker
from eval.evaluator import EvalResult, RankingEvaluator
from eval.metrics import per_user_metrics
from eval.rerank_study.report import paired_interval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedStage:
    kind: Literal["ranker", "head"]
    folder: Path
    retriever: str
    valid_ndcg10: float
    llm_states: str | None

    @property
    def label(self) -> str:
        llm = f"[{self.llm_states}]" if self.llm_states else ""
        return f"{self.retriever}+{self.kind}{llm}"

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointing the ``ranker`` / ``head`` reranker at this folder."""
        ranker = settings.ranker.model_copy(
            update={"path": self.folder}
            if self.kind == "ranker"
            else {"head_path": self.folder, "llm_states": self.llm_states}
        )
        return settings.model_copy(update={"ranker": ranker})


def trained_stages(settings: Settings) -> list[TrainedStage]:
    """Every ranker under ``<work_dir>/rankers/`` and head under ``<work_dir>/heads/``."""
    found: list[TrainedStage] = []
    roots: list[tuple[Literal["ranker", "head"], Path]] = [
        ("ranker", settings.work_dir / "rankers"),
        ("head", settings.work_dir / "heads"),
    ]
    for kind, root in roots:
        for card_path in sorted(root.glob("*/card.json")):
            try:
                card = json.loads(card_path.read_text(encoding="utf-8"))
                found.append(
                    TrainedStage(
                        kind,
                        card_path.parent,
                        str(card["retriever"]),
                        float(card["valid"]["best_ndcg10"]),
                        card.get("llm_states"),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("skipping %s: not a second-stage card (%s)", card_path, exc)
    return found


def best_stage(settings: Settings, retriever: str) -> TrainedStage | None:
    """The trained stage over ``retriever`` with the best valid NDCG@10 (None: none trained)."""
    mine = [s for s in trained_stages(settings) if s.retriever == retriever]
    return max(mine, key=lambda s: s.valid_ndcg10) if mine else None


@dataclass
class StageRow:
    stage: TrainedStage
    result: EvalResult
    delta: tuple[float, float, float]  # paired NDCG@10 difference to the retriever, 95% CI
    ms_per_user: float


def evaluate_stage(
    evaluator: RankingEvaluator,
    retriever: Recommender,
    baseline: EvalResult,
    stage: TrainedStage,
    settings: Settings,
) -> StageRow:
    """``stage`` over ``retriever`` on the evaluator's users, with its paired difference."""
    mine = stage.settings(settings)
    reranker = make_reranker(stage.kind, None, mine, data=retriever.data)
    system = TwoStageRecommender(
        retriever,
        reranker,
        top_n=reranker.top_n or settings.rerank.top_n,
        history_items=HISTORY_ITEMS,
    )
    result = evaluator(system, name=stage.label)
    if result.user_ids != baseline.user_ids:
        raise ValueError("the second stage and its retriever were evaluated on other users")
    diff = per_user_metrics(result.ranks, [10])[:, 1] - per_user_metrics(baseline.ranks, [10])[:, 1]
    stats = system.stats.as_dict()
    return StageRow(
        stage,
        result,
        paired_interval(np.asarray(diff), 1000, settings.seed),
        1000 * float(stats["rerank_s_per_user"]),
    )
