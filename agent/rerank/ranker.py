"""The learned ranker: LightGBM LambdaRank over per-candidate features (``features.py``).

"Deep retrieve, then shallow rank" (the KDD Cup 2023 winners): the retriever's top N are
reordered by a gradient-boosted ranker that sees the retriever's score beside what it does not
model well (text similarity to the recent history, co-visitation and transitions counted on
train rows, popularity, coldness, domain switches) and, when given, cosines between frozen LLM
states of the items. No LLM call at inference: a user costs milliseconds.

A trained ranker is a folder: ``model.txt`` (the booster), ``card.json`` (feature names,
parameters, valid NDCG@10 per setting tried, feature importance, what it was trained on) and,
with LLM features, the name of the LLM item-state cache it reads. ``load_ranker`` reads it;
``LearnedRanker`` serves it through the ``Reranker`` interface, so it goes wherever listwise
and verbalizer go (``recommend``, ``score``, studies, the HTTP API's ``RETRIEVER+ranker``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.llm.backend import LLMBackend
from agent.models.base import Recommender
from agent.rerank.base import Reranker, RerankRequest, RerankResult
from agent.rerank.features import HISTORY_ITEMS, FeatureBuilder

log = logging.getLogger(__name__)

MODEL_FILE = "model.txt"
CARD_FILE = "card.json"


class RankerError(ValueError):
    """A ranker folder that cannot be used (missing, or features that do not match)."""


@dataclass
class RankerGroups:
    """LambdaRank training data: feature rows of consecutive groups (one group a user's list,
    in retrieval order), a 0/1 label per row, and the size of each group."""

    features: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    user_ids: list[str] = field(default_factory=list)
    # Dense ids of each row's candidate, and each group's recent history (the correction
    # head reads the items' LLM states through them).
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    histories: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0] or int(self.sizes.sum()) != len(
            self.labels
        ):
            raise ValueError(
                f"groups do not add up: {self.features.shape[0]} rows, {len(self.labels)} "
                f"labels, sizes summing to {int(self.sizes.sum())}"
            )

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)])

    def with_llm_columns(self, builder: FeatureBuilder) -> RankerGroups:
        """These groups with the builder's LLM-state columns appended (the same values
        ``builder.group`` gives: the columns read only the candidates and recent history)."""
        offsets = self.offsets
        extra = (
            np.concatenate(
                [
                    builder.llm_columns(self.items[lo:hi], self.histories[g])
                    for g, (lo, hi) in enumerate(itertools.pairwise(offsets))
                ]
            )
            if len(self.sizes)
            else np.zeros((0, 2), np.float32)
        )
        return RankerGroups(
            np.concatenate([self.features, extra], axis=1),
            self.labels,
            self.sizes,
            self.user_ids,
            self.items,
            self.histories,
        )

    def save(self, path: Path) -> None:
        """One ``.npz`` (written whole, then renamed: a kill leaves no half file)."""
        lengths = np.asarray([len(h) for h in self.histories], dtype=np.int64)
        flat = np.concatenate(self.histories) if self.histories else np.zeros(0, np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            features=self.features,
            labels=self.labels,
            sizes=self.sizes,
            items=self.items,
            history_lengths=lengths,
            history_ids=flat.astype(np.int64),
            user_ids=np.asarray(self.user_ids, dtype=str),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RankerGroups:
        with np.load(path) as z:
            cuts = np.cumsum(z["history_lengths"])[:-1]
            return cls(
                z["features"],
                z["labels"],
                z["sizes"],
                [str(u) for u in z["user_ids"]],
                z["items"],
                list(np.split(z["history_ids"], cuts)) if len(z["history_lengths"]) else [],
            )

    @classmethod
    def concat(cls, parts: Sequence[RankerGroups], width: int) -> RankerGroups:
        if not parts:
            return cls(np.zeros((0, width), np.float32), np.zeros(0), np.zeros(0, np.int64))
        return cls(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.sizes for p in parts]),
            [u for p in parts for u in p.user_ids],
            np.concatenate([p.items for p in parts]),
            [h for p in parts for h in p.histories],
        )


def make_groups(
    builder: FeatureBuilder,
    user_ids: Sequence[str],
    histories: Sequence[Sequence[str]],
    lists: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    targets: Sequence[str | None],
    extra_scores: Sequence[Sequence[np.ndarray]] | None = None,
) -> RankerGroups:
    """One group per user: ``lists[u]`` (the retrieved candidates, retrieval order) with their
    retriever ``scores``; label 1 for the user's target (no target: all 0, inference).
    ``extra_scores[u]``: the builder's extra retrievers' scores of ``lists[u]``."""
    extras = extra_scores if extra_scores is not None else [()] * len(lists)
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    sizes: list[int] = []
    items: list[int] = []
    recent: list[np.ndarray] = []
    index = builder.data.catalog.index
    for history, cands, score, target, extra in zip(
        histories, lists, scores, targets, extras, strict=True
    ):
        feats.append(builder.group(history, cands, score, extra))
        labels.append(np.asarray([c == target for c in cands], dtype=np.float64))
        sizes.append(len(cands))
        items.extend(index.get(c, 0) for c in cands)
        recent.append(builder.recent_ids(history))
    width = len(builder.names)
    return RankerGroups(
        np.concatenate(feats) if feats else np.zeros((0, width), np.float32),
        np.concatenate(labels) if labels else np.zeros(0),
        np.asarray(sizes, dtype=np.int64),
        list(user_ids),
        np.asarray(items, dtype=np.int64),
        recent,
    )


@dataclass
class RankerCard:
    """What a trained ranker is: its features and settings, and how it was chosen."""

    features: list[str]
    params: dict[str, Any]
    best_iteration: int
    top_n: int
    retriever: str
    llm_states: str | None = None  # the LLM item-state cache's name; None: no LLM features
    extra_retrievers: list[str] = field(default_factory=list)  # their scores are features
    valid: dict[str, Any] = field(default_factory=dict)  # per setting tried: valid NDCG@10
    importance: dict[str, float] = field(default_factory=dict)  # gain, normalised to sum 1
    train: dict[str, Any] = field(default_factory=dict)  # groups, rows, seconds, peak RSS

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def save_ranker(folder: Path, booster: Any, card: RankerCard) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(folder / MODEL_FILE), num_iteration=card.best_iteration or None)
    tmp = folder / (CARD_FILE + ".tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(folder / CARD_FILE)
    return folder


def read_card(folder: Path) -> RankerCard:
    path = folder / CARD_FILE
    if not path.is_file() or not (folder / MODEL_FILE).is_file():
        raise RankerError(
            f"no trained ranker in {folder} (expected {MODEL_FILE} and {CARD_FILE}): "
            "train one with `recbridge ranker train`"
        )
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return RankerCard(**body)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RankerError(f"{path}: not a ranker card ({exc})") from None


def load_booster(folder: Path) -> Any:
    import lightgbm as lgb

    return lgb.Booster(model_file=str(folder / MODEL_FILE))


def predict(booster: Any, features: np.ndarray, iteration: int | None = None) -> np.ndarray:
    """The booster's scores (its first ``iteration`` trees; None: all it has)."""
    if features.shape[0] == 0:
        return np.zeros(0)
    scores = booster.predict(features, num_iteration=iteration or None, num_threads=1)
    return np.asarray(scores, dtype=np.float64)


def request_features(
    builder: FeatureBuilder, request: RerankRequest, extra: Sequence[Recommender]
) -> np.ndarray:
    """The feature matrix of one request's list (the extra retrievers score it here)."""
    ids, history = request.candidate_ids, request.history_ids
    others = [np.asarray(m.score([history], [ids])[0]) for m in extra]
    return builder.group(history, ids, [c.score for c in request.candidates], others)


def scored_result(
    request: RerankRequest, name: str, values: Sequence[float], started: float
) -> RerankResult:
    """The list ordered by ``values`` (ties keep the retrieval order), timed from ``started``."""
    ids = request.candidate_ids
    position = {iid: pos for pos, iid in enumerate(ids)}
    scores = {iid: float(v) for iid, v in zip(ids, values, strict=True)}
    wall = time.perf_counter() - started
    return RerankResult(
        user_id=request.user_id,
        reranker=name,
        ranking=sorted(ids, key=lambda i: (-scores[i], position[i])),
        scores=scores,
        wall_s=wall,
        latency_s=wall,
    )


class LearnedRanker(Reranker):
    """Serves a trained ranker (module docstring). It makes no LLM call: ``backend`` may be
    None (the API then never loads an LLM for a ``+ranker`` pipeline)."""

    name = "ranker"
    history_items = HISTORY_ITEMS  # the features' longest window

    def __init__(
        self,
        backend: LLMBackend | None,
        builder: FeatureBuilder,
        booster: Any,
        card: RankerCard,
        *,
        folder: Path | None = None,
        extra: Sequence[Recommender] = (),
    ) -> None:
        super().__init__(backend)
        if builder.names != card.features:
            raise RankerError(
                f"ranker {folder}: trained on features {card.features}, the builder gives "
                f"{builder.names} (LLM item states missing or different?)"
            )
        self.builder = builder
        self.booster = booster
        self.card = card
        self.folder = folder
        self.extra = list(extra)
        self.top_n = card.top_n

    async def arerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        return [self._one(r) for r in requests]

    def _one(self, request: RerankRequest) -> RerankResult:
        started = time.perf_counter()
        feats = request_features(self.builder, request, self.extra)
        return scored_result(request, self.name, predict(self.booster, feats).tolist(), started)

    def describe(self) -> dict[str, Any]:
        return {
            "reranker": self.name,
            "ranker": str(self.folder) if self.folder else None,
            "features": len(self.card.features),
            "llm_states": self.card.llm_states,
            "best_iteration": self.card.best_iteration,
            "params": self.card.params,
        }


# Feature builders by (dataset, embeddings cache, states): the train-row counts take seconds.
_BUILDERS: dict[tuple[int, str, str | None, tuple[str, ...]], tuple[Any, FeatureBuilder]] = {}


def feature_builder_for(
    data: Any, settings: Any, llm_states: str | None, extra: Sequence[str] = ()
) -> FeatureBuilder:
    """The inference-time features of ``data`` (all train rows), built once per process."""
    import weakref

    from agent.items.embeddings import item_embeddings
    from agent.items.llm_states import load_item_states
    from agent.rerank.features import item_stats

    key = (id(data), str(settings.embedding_cache_dir), llm_states, tuple(extra))
    hit = _BUILDERS.get(key)
    if hit is not None and hit[0]() is data:
        return hit[1]
    states = load_item_states(data, settings, llm_states) if llm_states else None
    builder = FeatureBuilder(
        data,
        item_stats(data),
        item_embeddings(data, settings, progress=False),
        states,
        extra=extra,
    )
    _BUILDERS[key] = (weakref.ref(data), builder)
    return builder


def load_ranker(
    folder: Path, backend: LLMBackend | None, data: Any, settings: Any
) -> LearnedRanker:
    """The trained ranker in ``folder``, its features over ``data``."""
    from agent.models.prepare import prepare_model

    card = read_card(folder)
    builder = feature_builder_for(data, settings, card.llm_states, card.extra_retrievers)
    # The extra retrievers' trained checkpoints (their scores are features).
    extra = [prepare_model(n, data, settings).model for n in card.extra_retrievers]
    return LearnedRanker(backend, builder, load_booster(folder), card, folder=folder, extra=extra)
