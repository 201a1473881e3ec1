"""Scoring a study's checkpoints on shared candidates, one cached result per run."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Settings, load_settings
from agent.data.schema import Dataset
from agent.models.checkpoint import FIT_REPORT_FILE
from agent.models.prepare import prepare_model
from agent.models.registry import recommender_class
from eval.evaluator import EvalResult, RankingEvaluator
from eval.study.spec import StudyRow, StudySpec, checkpoint_dir, has_run, row_settings, transfers
from eval.transfer import Transfer, apply_transfer, transfer_settings

log = logging.getLogger(__name__)

RESULT_VERSION = 1
METRICS = ("hr@10", "ndcg@10", "mrr")


@dataclass
class Cell:
    """One (protocol, row, seed) result: metrics per group, and what training cost."""

    tag: str
    row: str
    seed: int | None  # None: a model that needs no training (one deterministic result)
    metrics: dict[str, dict[str, float]]  # group -> metric -> value
    n_users: dict[str, int]
    fit: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RESULT_VERSION,
            "tag": self.tag,
            "row": self.row,
            "seed": self.seed,
            "metrics": self.metrics,
            "n_users": self.n_users,
            "fit": self.fit,
        }


def _cell(tag: str, row: str, seed: int | None, result: EvalResult, fit: dict[str, Any]) -> Cell:
    metrics = {
        g: {m: float(v.mean) for m, v in ms.items() if m in METRICS}
        for g, ms in result.metrics.items()
    }
    return Cell(tag, row, seed, metrics, dict(result.n_users_by_group), fit)


def _fit_summary(path: Path) -> dict[str, Any]:
    body = json.loads((path / FIT_REPORT_FILE).read_text(encoding="utf-8"))
    return {k: body.get(k) for k in ("epochs", "best_epoch", "best_valid_ndcg10", "seconds")} | {
        "seconds_per_epoch": body.get("seconds_per_epoch"),
    }


def _cached(path: Path, stamp: float) -> Cell | None:
    if not path.is_file():
        return None
    body = json.loads(path.read_text(encoding="utf-8"))
    if body.get("version") != RESULT_VERSION or body.get("checkpoint_mtime") != stamp:
        return None
    return Cell(
        body["tag"], body["row"], body["seed"], body["metrics"], body["n_users"], body["fit"]
    )


def evaluate_study(
    spec: StudySpec,
    full: Dataset,
    root: Path,
    *,
    config_file: Path | None = None,
    base_set: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """Score every checkpoint on disk (cached per checkpoint); missing ones are skipped."""
    cells: list[Cell] = []
    base = load_settings(config_file, set_items=[*base_set, *spec.set, f"seed={spec.eval_seed}"])
    for protocol in spec.protocols:
        for transfer in transfers(protocol, spec.history_from):
            data, _ = apply_transfer(full, transfer)
            evaluator = RankingEvaluator(data, transfer_settings(base, transfer))
            log.info("%s: %d test users", transfer.label, len(evaluator.users))
            for row in spec.rows:
                settings = transfer_settings(
                    row_settings(config_file, base_set, spec, row), transfer
                )
                owner = row.checkpoint_of or row.name
                row_seeds: list[int | None] = (
                    list(spec.seeds_of(row, seeds))
                    if recommender_class(row.model).trainable
                    else [None]
                )
                for seed in row_seeds:
                    cell = _evaluate_one(
                        evaluator, data, settings, root, transfer, row, owner, seed
                    )
                    if cell is not None:
                        cells.append(cell)
    return cells


def _evaluate_one(
    evaluator: RankingEvaluator,
    data: Dataset,
    settings: Settings,
    root: Path,
    transfer: Transfer,
    row: StudyRow,
    owner: str,
    seed: int | None,
) -> Cell | None:
    tag = transfer.tag
    cache = root / "results" / tag / f"{row.name}-{'det' if seed is None else f'seed{seed}'}.json"
    ckpt = None if seed is None else checkpoint_dir(root, transfer, owner, seed)
    fit: dict[str, Any] = {}
    stamp = 0.0
    if ckpt is not None:
        if not has_run(ckpt):
            log.warning("%s %s seed %d: no checkpoint at %s (skipped)", tag, row.name, seed, ckpt)
            return None
        stamp = (ckpt / FIT_REPORT_FILE).stat().st_mtime
        fit = _fit_summary(ckpt)
    cached = _cached(cache, stamp)
    if cached is not None:
        return cached
    prep = prepare_model(row.model, data, settings, checkpoint=ckpt)
    result = evaluator(prep.model, name=row.name)
    cell = _cell(tag, row.name, seed, result, fit)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(cell.to_dict() | {"checkpoint_mtime": stamp}, indent=1), encoding="utf-8"
    )
    log.info(
        "%s %s%s: NDCG@10 %.4f",
        tag,
        row.name,
        "" if seed is None else f" seed {seed}",
        result.primary,
    )
    return cell
