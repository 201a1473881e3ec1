"""Training the learned ranker (``recbridge ranker train``), from train rows only.

1. Groups to learn from (``train_groups``): the ranker's retriever retrained with each train
   row's last item held out (``holdout_retriever``, so it never saw those targets) ranks what
   the test protocol shows it: the row's last item and ``ranker.negatives`` uniform negatives
   of its domain from outside the row. Its top N (``ranker.top_n``) is the group, the held-out
   item the label; a row whose target it misses gives no signal to a ranker of its top N and
   is skipped, counted. Features read the holdout rows' counts, so the label's own transition
   is not among them.
2. Groups to choose on (``valid_groups``): the trained retriever's top N for the valid users,
   under the evaluation's own valid candidates (the test protocol), features from all train
   rows, as at inference.
3. A small grid (``ranker.num_leaves`` x ``ranker.min_data_in_leaf``), each with early
   stopping on valid NDCG@10; the best valid NDCG@10 (over every valid user: a target outside
   the top N counts 0) is kept, with its feature importance, in the ranker's folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.embeddings import item_embeddings
from agent.items.llm_states import load_item_states
from agent.models.base import UNKNOWN_ITEM_SCORE, Recommender
from agent.models.prepare import prepare_model
from agent.pipeline.retrieve import top_n
from agent.rerank.features import FeatureBuilder, ItemStats
from agent.rerank.ranker import RankerCard, RankerGroups, make_groups, predict, save_ranker
from eval.candidates import get_candidates
from eval.evaluator import make_valid_fn
from finetune.build import domain_pools, holdout_dataset, sample_negatives
from finetune.pipeline import holdout_retriever

log = logging.getLogger(__name__)

SCORE_BATCH = 256
GROUPS_VERSION = 1


@dataclass
class GroupReport:
    rows: int  # train rows looked at
    kept: int  # groups with the target in the top N
    skipped: int  # rows whose target the holdout retriever missed
    seconds: float


def _top(
    retriever: Recommender,
    histories: list[list[str]],
    pools: list[list[str]],
    n: int,
    seed: int,
) -> tuple[list[list[str]], list[list[float]]]:
    scores = retriever.score(histories, pools)
    lists: list[list[str]] = []
    values: list[list[float]] = []
    for row, (pool, score) in enumerate(zip(pools, scores, strict=True)):
        arr = np.asarray(score, dtype=np.float64)
        arr = np.where(arr > UNKNOWN_ITEM_SCORE, arr, -np.inf)
        order = top_n(arr, n, np.random.default_rng([seed, row]))
        lists.append([pool[int(i)] for i in order])
        values.append([float(arr[int(i)]) for i in order])
    return lists, values


def _extra_scores(
    models: Sequence[Recommender], histories: list[list[str]], lists: list[list[str]]
) -> list[list[np.ndarray]]:
    """Per user, each extra retriever's scores of that user's list."""
    if not lists:
        return []
    per_model = [m.score(histories, lists) for m in models]
    return [[np.asarray(scores[u]) for scores in per_model] for u in range(len(lists))]


def train_groups(
    data: Dataset,
    retriever: Recommender,
    builder: FeatureBuilder,
    *,
    top: int,
    negatives: int,
    max_rows: int,
    seed: int,
    extra: Sequence[Recommender] = (),
) -> tuple[RankerGroups, GroupReport]:
    """Groups from train rows (module docstring, step 1). ``retriever`` and ``builder`` must
    come from ``holdout_dataset(data)``."""
    started = time.perf_counter()
    rng = random.Random(seed)
    rows = [u for u in data.split("train") if len(u.items) >= 2]
    rng.shuffle(rows)
    if max_rows:
        rows = rows[:max_rows]
    pools = domain_pools(data)
    parts: list[RankerGroups] = []
    kept = skipped = 0
    for start in tqdm(range(0, len(rows), SCORE_BATCH), desc="ranker train groups", unit="batch"):
        chunk = rows[start : start + SCORE_BATCH]
        histories = [list(r.items[:-1]) for r in chunk]
        targets = [r.items[-1] for r in chunk]
        lists = []
        for row, target in zip(chunk, targets, strict=True):
            pool = pools[data.items[target].domain]
            count = min(negatives, len(pool) - len(set(row.items)))
            lists.append([target, *sample_negatives(pool, set(row.items), count, rng)])
        shown, values = _top(retriever, histories, lists, top, seed + start)
        keep = [i for i, (s, t) in enumerate(zip(shown, targets, strict=True)) if t in s]
        skipped += len(chunk) - len(keep)
        kept += len(keep)
        others = _extra_scores(extra, [histories[i] for i in keep], [shown[i] for i in keep])
        parts.append(
            make_groups(
                builder,
                [chunk[i].user_id for i in keep],
                [histories[i] for i in keep],
                [shown[i] for i in keep],
                [values[i] for i in keep],
                [targets[i] for i in keep],
                others,
            )
        )
    groups = RankerGroups.concat(parts, len(builder.names))
    report = GroupReport(len(rows), kept, skipped, time.perf_counter() - started)
    log.info(
        "ranker train groups: %d of %d rows kept (%d targets outside the top %d) in %.0fs",
        kept,
        len(rows),
        skipped,
        top,
        report.seconds,
    )
    return groups, report


def valid_groups(
    data: Dataset,
    settings: Settings,
    retriever: Recommender,
    builder: FeatureBuilder,
    *,
    top: int,
    extra: Sequence[Recommender] = (),
) -> tuple[RankerGroups, int]:
    """Every valid user's top N under the evaluation's valid candidates (step 2); -> (groups,
    number of valid users: those whose target is outside the top N still count in NDCG)."""
    candidates = get_candidates(data, settings, "valid", "sampled-999")
    users = data.split("valid")
    parts: list[RankerGroups] = []
    for start in range(0, len(users), SCORE_BATCH):
        chunk = users[start : start + SCORE_BATCH]
        sets = [candidates.get(u) for u in chunk]
        histories = [list(u.history) for u in chunk]
        shown, values = _top(
            retriever, histories, [list(s.candidates) for s in sets], top, settings.seed + start
        )
        parts.append(
            make_groups(
                builder,
                [u.user_id for u in chunk],
                histories,
                shown,
                values,
                [u.target for u in chunk],
                _extra_scores(extra, histories, shown),
            )
        )
    return RankerGroups.concat(parts, len(builder.names)), len(users)


def ndcg10(groups: RankerGroups, scores: np.ndarray, users: int) -> float:
    """Mean NDCG@10 of the label in each group ordered by ``scores`` (ties: retrieval order),
    over ``users`` (groups without a label, and users without a group, count 0)."""
    total = 0.0
    offsets = groups.offsets
    for g in range(len(groups.sizes)):
        lo, hi = int(offsets[g]), int(offsets[g + 1])
        labels = groups.labels[lo:hi]
        if not labels.any():
            continue
        order = np.lexsort((np.arange(hi - lo), -scores[lo:hi]))
        pos = int(np.flatnonzero(labels[order] > 0)[0])
        if pos < 10:
            total += 1.0 / np.log2(pos + 2)
    return total / max(1, users)


def fit_lightgbm(
    train: RankerGroups,
    valid: RankerGroups,
    valid_users: int,
    settings: Settings,
    names: Sequence[str],
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The grid (step 3); -> (best booster, its params, the valid curve per setting)."""
    import lightgbm as lgb

    cfg = settings.ranker
    dtrain = lgb.Dataset(
        train.features,
        train.labels,
        group=train.sizes,
        feature_name=list(names),
        free_raw_data=False,
    )
    has_label = [
        bool(valid.labels[lo:hi].any())
        for lo, hi in zip(valid.offsets[:-1], valid.offsets[1:], strict=True)
    ]
    keep_rows = np.repeat(np.asarray(has_label), valid.sizes)
    dvalid = lgb.Dataset(
        valid.features[keep_rows],
        valid.labels[keep_rows],
        group=valid.sizes[np.asarray(has_label)],
        reference=dtrain,
    )
    tried: dict[str, Any] = {}
    best: tuple[float, Any, dict[str, Any]] | None = None
    for leaves in cfg.num_leaves:
        for min_leaf in cfg.min_data_in_leaf:
            params = {
                "objective": "lambdarank",
                "metric": "ndcg",
                "eval_at": [10],
                "lambdarank_truncation_level": 20,
                "learning_rate": cfg.learning_rate,
                "num_leaves": leaves,
                "min_data_in_leaf": min_leaf,
                "feature_fraction": 0.9,
                "bagging_fraction": 0.8,
                "bagging_freq": 1,
                "seed": settings.seed,
                "deterministic": True,
                "force_row_wise": True,
                "num_threads": cfg.threads,
                "verbosity": -1,
            }
            booster = lgb.train(
                params,
                dtrain,
                num_boost_round=cfg.rounds,
                valid_sets=[dvalid],
                callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)],
            )
            score = ndcg10(
                valid, predict(booster, valid.features, booster.best_iteration), valid_users
            )
            key = f"leaves={leaves},min_data_in_leaf={min_leaf}"
            tried[key] = {"valid_ndcg10": score, "best_iteration": booster.best_iteration}
            log.info(
                "ranker %s: valid NDCG@10 %.4f at %d rounds", key, score, booster.best_iteration
            )
            if best is None or score > best[0]:
                best = (score, booster, params)
    assert best is not None
    return best[1], best[2], tried


def feature_builder(
    data: Dataset, settings: Settings, embeddings: np.ndarray, llm_states: str | None
) -> FeatureBuilder:
    """Features over ``data``'s train rows (the holdout data for training groups)."""
    states = load_item_states(data, settings, llm_states) if llm_states else None
    return FeatureBuilder(
        data,
        ItemStats.from_train(data),
        embeddings,
        states,
        extra=settings.ranker.extra_retrievers,
    )


def _holdout(settings: Settings, data: Dataset, name: str) -> tuple[Recommender, Path]:
    """``name`` retrained with each train row's last item held out (or its checkpoint)."""
    changed = settings.finetune.model_copy(update={"retriever": name})
    return holdout_retriever(settings.model_copy(update={"finetune": changed}), data)


@dataclass
class RankerData:
    """The groups a second stage learns from (train) and is chosen on (valid)."""

    train: RankerGroups
    valid: RankerGroups
    valid_users: int
    names: list[str]
    info: dict[str, Any]


def ranker_data(settings: Settings, data: Dataset) -> RankerData:
    """Steps 1-2 of the module docstring, cached under ``<work_dir>/rankers/groups/`` by
    everything that shapes them (a second call, or the head after the ranker, reads them)."""
    cfg = settings.ranker
    top = settings.ranker.top_n
    started = time.perf_counter()
    embeddings = item_embeddings(data, settings)
    holdout_settings = settings.model_copy(
        update={"finetune": settings.finetune.model_copy(update={"retriever": cfg.retriever})}
    )
    held, held_path = holdout_retriever(holdout_settings, data)
    extra_held = [_holdout(settings, data, name) for name in cfg.extra_retrievers]
    # Trained here when it has no checkpoint (as `recbridge train` would: early stopping on
    # valid users), like the holdout twin above.
    retriever_ckpt = prepare_model(
        cfg.retriever, data, settings, train=True, valid_fn_factory=make_valid_fn
    )
    extra_full = [
        prepare_model(name, data, settings, train=True, valid_fn_factory=make_valid_fn)
        for name in cfg.extra_retrievers
    ]
    key = _fingerprint(
        data.name,
        len(data.catalog),
        cfg.retriever,
        cfg.negatives,
        cfg.train_rows,
        top,
        settings.seed,
        _mtime(held_path),
        _mtime(retriever_ckpt.checkpoint),
        [
            (n, _mtime(p), _mtime(f.checkpoint))
            for n, (_, p), f in zip(cfg.extra_retrievers, extra_held, extra_full, strict=True)
        ],
        GROUPS_VERSION,
    )
    folder = settings.work_dir / "rankers" / "groups" / key
    info_path = folder / "info.json"
    base = feature_builder(data, settings, embeddings, None)
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        log.info("ranker groups: reusing %s", folder)
        found = RankerData(
            RankerGroups.load(folder / "train.npz"),
            RankerGroups.load(folder / "valid.npz"),
            int(info["valid_users"]),
            base.names,
            info,
        )
        return _with_llm(found, data, settings, embeddings)
    holdout = holdout_dataset(data)
    train, report = train_groups(
        data,
        held,
        feature_builder(holdout, settings, embeddings, None),
        top=top,
        negatives=cfg.negatives,
        max_rows=cfg.train_rows,
        seed=settings.seed,
        extra=[m for m, _ in extra_held],
    )
    valid, valid_users = valid_groups(
        data, settings, retriever_ckpt.model, base, top=top, extra=[f.model for f in extra_full]
    )
    info = {
        "holdout_retriever": str(held_path),
        "retriever_checkpoint": str(retriever_ckpt.checkpoint),
        "rows": report.rows,
        "groups": report.kept,
        "skipped_target_missed": report.skipped,
        "valid_users": valid_users,
        "seconds": time.perf_counter() - started,
    }
    folder.mkdir(parents=True, exist_ok=True)
    train.save(folder / "train.npz")
    valid.save(folder / "valid.npz")
    info_path.write_text(json.dumps(info, indent=1), encoding="utf-8")
    return _with_llm(
        RankerData(train, valid, valid_users, base.names, info), data, settings, embeddings
    )


def _with_llm(
    found: RankerData, data: Dataset, settings: Settings, embeddings: np.ndarray
) -> RankerData:
    """The groups with the LLM-state columns of ``ranker.llm_states`` (none: as they are).
    The columns read only items and recent history, so holdout and full counts agree."""
    if not settings.ranker.llm_states:
        return found
    builder = feature_builder(data, settings, embeddings, settings.ranker.llm_states)
    return RankerData(
        found.train.with_llm_columns(builder),
        found.valid.with_llm_columns(builder),
        found.valid_users,
        builder.names,
        {**found.info, "llm_states": settings.ranker.llm_states},
    )


def _mtime(path: Path | None) -> float | None:
    if path is None:
        return None
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return max((p.stat().st_mtime for p in files), default=None)


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_ranker(settings: Settings, data: Dataset, out: Path | None = None) -> Path:
    """Steps 1-3 of the module docstring; -> the ranker folder (``settings.ranker_dir``)."""
    cfg = settings.ranker
    out = out or settings.ranker_dir
    started = time.perf_counter()
    groups = ranker_data(settings, data)
    train, valid, valid_users = groups.train, groups.valid, groups.valid_users
    retriever_ndcg = ndcg10(valid, -valid.features[:, 1], valid_users)  # retr_rank ascending
    log.info("valid NDCG@10 of the retriever's order: %.4f", retriever_ndcg)
    fit_started = time.perf_counter()
    booster, params, tried = fit_lightgbm(train, valid, valid_users, settings, groups.names)
    gains = booster.feature_importance(importance_type="gain", iteration=booster.best_iteration)
    total = float(np.sum(gains)) or 1.0
    card = RankerCard(
        features=groups.names,
        params=params,
        best_iteration=int(booster.best_iteration),
        top_n=settings.ranker.top_n,
        retriever=cfg.retriever,
        llm_states=cfg.llm_states,
        extra_retrievers=list(cfg.extra_retrievers),
        valid={
            "users": valid_users,
            "retriever_ndcg10": retriever_ndcg,
            "tried": tried,
            "best_ndcg10": max(t["valid_ndcg10"] for t in tried.values()),
        },
        importance={n: float(g) / total for n, g in zip(groups.names, gains, strict=True)},
        train={
            **groups.info,
            "fit_seconds": time.perf_counter() - fit_started,
            "wall_seconds": time.perf_counter() - started,
            "peak_rss_mb": peak_rss_mb(),
            "seed": settings.seed,
        },
    )
    save_ranker(out, booster, card)
    log.info(
        "ranker -> %s: valid NDCG@10 %.4f (retriever %.4f)",
        out,
        card.valid["best_ndcg10"],
        retriever_ndcg,
    )
    return out
