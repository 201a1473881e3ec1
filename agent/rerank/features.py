"""Per-candidate features for the learned ranker, from train rows and item vectors only.

``ItemStats`` counts what the train rows say about items: popularity, popularity among the
last items of rows (a recency proxy: the data has no timestamps), direct transitions a -> b
and co-visitation within a window. It is built from ``data.split("train")`` and nothing
else, so a valid or test target never shapes a feature (``tests/unit/test_ranker_features``
proves it by changing held-out rows). For the ranker's own training groups the stats come
from the holdout data (every train row's last item removed), so the label item's own
transition is never counted either.

``FeatureBuilder.group`` turns one user's retrieved list into a matrix, one row a candidate,
columns named by ``FEATURES`` (plus ``llm_*`` columns when LLM item states are given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from agent.data.schema import Dataset

# Co-visitation counts pairs at most this many positions apart in a train row.
COVISIT_WINDOW = 5
# A candidate with at most this many train interactions is "cold" (the slice).
COLD_MAX = 5
# Items of the recent history the similarity and co-visitation features look at.
RECENT = 10
# The longest history a feature reads (the rest of a long history is cut, as at inference).
HISTORY_ITEMS = 50

BASE_FEATURES: tuple[str, ...] = (
    "retr_score",
    "retr_rank",
    "retr_gap_top",
    "retr_z",
    "cos_last1",
    "cos_last3",
    "cos_max10",
    "cos_mean10",
    "cos_domain_mean",
    "same_domain_last",
    "domain_share",
    "log_pop",
    "log_pop_recent",
    "trans_last1",
    "trans_last3",
    "covisit_sum10",
    "covisit_max10",
    "cold",
    "unseen",
    "log_hist_len",
    "in_history",
)
# Per extra retriever (another recommender's score of the same list): "<name>__<column>"
# (LightGBM refuses JSON characters such as ":" in feature names).
EXTRA_COLUMNS: tuple[str, ...] = ("score", "rank", "z")
LLM_FEATURES: tuple[str, ...] = ("llm_cos_last1", "llm_cos_mean10")


@dataclass
class ItemStats:
    """Counts over train rows; arrays are indexed by dense item id (0 = padding)."""

    count: np.ndarray
    recent_count: np.ndarray
    transitions: sparse.csr_matrix  # [a, b]: b right after a
    covisit: sparse.csr_matrix  # [a, b] = [b, a]: within COVISIT_WINDOW positions
    rows: int

    @classmethod
    def from_train(cls, data: Dataset) -> ItemStats:
        n = len(data.catalog) + 1
        count = np.zeros(n, dtype=np.float64)
        recent = np.zeros(n, dtype=np.float64)
        t_src: list[int] = []
        t_dst: list[int] = []
        c_src: list[int] = []
        c_dst: list[int] = []
        rows = 0
        for user in data.iter_split("train"):
            dense = data.catalog.encode(user.items)
            if not dense:
                continue
            rows += 1
            np.add.at(count, dense, 1.0)
            np.add.at(recent, dense[-3:], 1.0)
            t_src.extend(dense[:-1])
            t_dst.extend(dense[1:])
            for gap in range(1, COVISIT_WINDOW + 1):
                c_src.extend(dense[:-gap])
                c_dst.extend(dense[gap:])
        trans = sparse.coo_matrix(
            (np.ones(len(t_src)), (t_src, t_dst)), shape=(n, n), dtype=np.float64
        ).tocsr()
        both_src = c_src + c_dst
        both_dst = c_dst + c_src
        cov = sparse.coo_matrix(
            (np.ones(len(both_src)), (both_src, both_dst)), shape=(n, n), dtype=np.float64
        ).tocsr()
        trans.sum_duplicates()
        cov.sum_duplicates()
        return cls(count, recent, trans, cov, rows)


_STATS: dict[int, tuple[Any, ItemStats]] = {}  # id(data) -> (weakref to data, its stats)


def item_stats(data: Dataset) -> ItemStats:
    """``ItemStats.from_train(data)``, built once per dataset and process (the learned rankers'
    features and the reasons of recommendations read the same counts)."""
    import weakref

    found = _STATS.get(id(data))
    if found is not None and found[0]() is data:
        return found[1]
    stats = ItemStats.from_train(data)
    _STATS[id(data)] = (weakref.ref(data), stats)
    return stats


def _score_columns(score: np.ndarray) -> tuple[np.ndarray, ...]:
    """(score, rank in the list (0 best), gap to the top, z-score within the list); a NaN
    score (an item the model cannot score) stays NaN, which LightGBM treats as missing."""
    k = len(score)
    known = np.isfinite(score)
    filled = np.where(known, score, -np.inf)
    rank = np.empty(k, dtype=np.float64)
    rank[np.argsort(-filled, kind="stable")] = np.arange(k)
    if not known.any():
        nan = np.full(k, np.nan)
        return score, rank, nan, nan
    top = float(score[known].max())
    std = float(score[known].std())
    z = (score - float(score[known].mean())) / std if std > 1e-12 else np.where(known, 0.0, np.nan)
    return score, rank, score - top, z


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: np.ndarray = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


class FeatureBuilder:
    """Feature matrices for retrieved lists (see the module docstring).

    ``embeddings``: the item text vectors (one row per dense id, row 0 padding);
    ``llm_states``: optional frozen LLM states of the items, same indexing.
    """

    def __init__(
        self,
        data: Dataset,
        stats: ItemStats,
        embeddings: np.ndarray,
        llm_states: np.ndarray | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        if embeddings.shape[0] != len(data.catalog) + 1:
            raise ValueError(
                f"item embeddings have {embeddings.shape[0]} rows for "
                f"{len(data.catalog) + 1} catalogue ids"
            )
        if llm_states is not None and llm_states.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"LLM item states have {llm_states.shape[0]} rows, expected {embeddings.shape[0]}"
            )
        self.data = data
        self.stats = stats
        self.vectors = _unit(embeddings)
        self.llm = _unit(llm_states) if llm_states is not None else None
        self.domain_of = data.catalog.domain_of
        self.extra = tuple(extra)

    @property
    def names(self) -> list[str]:
        extra = [f"{name}__{col}" for name in self.extra for col in EXTRA_COLUMNS]
        return [*BASE_FEATURES, *extra, *(LLM_FEATURES if self.llm is not None else ())]

    def recent_ids(self, history: Sequence[str]) -> np.ndarray:
        """Dense ids of the last ``RECENT`` known history items, most recent last."""
        return np.asarray(self.data.catalog.encode(history)[-RECENT:], dtype=np.int64)

    def group(
        self,
        history: Sequence[str],
        candidates: Sequence[str],
        scores: Sequence[float],
        extra_scores: Sequence[np.ndarray] = (),
    ) -> np.ndarray:
        """(len(candidates), len(names)) float32 for one user's list, in retrieval order
        (``scores`` are the retriever's, best first is not required; ``extra_scores`` one
        list per name of ``extra``: the other retrievers' scores of the same candidates)."""
        if len(extra_scores) != len(self.extra):
            raise ValueError(f"{len(extra_scores)} extra score lists for retrievers {self.extra}")
        catalog = self.data.catalog
        hist = catalog.encode(history)[-HISTORY_ITEMS:]
        cands = np.asarray([catalog.index.get(c, 0) for c in candidates], dtype=np.int64)
        score = np.asarray(scores, dtype=np.float64)
        k = len(cands)
        out = np.zeros((k, len(self.names)), dtype=np.float32)
        if k == 0:
            return out
        cols: list[np.ndarray] = list(_score_columns(score))
        recent = np.asarray(hist[-RECENT:], dtype=np.int64)
        cvec = self.vectors[cands]
        if recent.size:
            sims = cvec @ self.vectors[recent].T  # (k, r), most recent last
            cand_dom = self.domain_of[cands]
            same = self.domain_of[recent][None, :] == cand_dom[:, None]
            dom_mean = np.where(same.any(axis=1), (sims * same).sum(1) / same.sum(1).clip(1), 0)
            cols += [
                sims[:, -1],
                sims[:, -3:].mean(axis=1),
                sims.max(axis=1),
                sims.mean(axis=1),
                dom_mean,
                (cand_dom == self.domain_of[recent[-1]]).astype(np.float64),
                (self.domain_of[np.asarray(hist)][None, :] == cand_dom[:, None]).mean(axis=1),
            ]
        else:
            cols += [np.zeros(k)] * 7
        count = self.stats.count[cands]
        cols += [np.log1p(count), np.log1p(self.stats.recent_count[cands])]
        if recent.size:
            trans = self.stats.transitions[recent[-3:]][:, cands].toarray()  # (<=3, k)
            cov = self.stats.covisit[recent][:, cands].toarray()  # (r, k)
            cols += [
                np.log1p(trans[-1]),
                np.log1p(trans.sum(axis=0)),
                np.log1p(cov.sum(axis=0)),
                np.log1p(cov.max(axis=0)),
            ]
        else:
            cols += [np.zeros(k)] * 4
        hist_set = set(hist)
        cols += [
            (count <= COLD_MAX).astype(np.float64),
            (count == 0).astype(np.float64),
            np.full(k, np.log1p(len(hist))),
            np.asarray([c in hist_set for c in cands.tolist()], dtype=np.float64),
        ]
        for extra in extra_scores:
            values = np.asarray(extra, dtype=np.float64)
            values = np.where(values > -1e29, values, np.nan)  # unknown items: missing
            value, rank, _gap, z = _score_columns(values)
            cols += [value, rank, z]
        for j, col in enumerate(cols):
            out[:, j] = col
        if self.llm is not None:
            out[:, -len(LLM_FEATURES) :] = self.llm_columns(cands, recent)  # the last columns
        return out

    def llm_columns(self, cands: np.ndarray, recent: np.ndarray) -> np.ndarray:
        """(len(cands), len(LLM_FEATURES)): cosines of the candidates' LLM states to the last
        history item's and, on average, to the recent items' (zeros without a history)."""
        if self.llm is None:
            raise ValueError("no LLM item states were given")
        out = np.zeros((len(cands), len(LLM_FEATURES)), dtype=np.float32)
        if recent.size:
            sims = self.llm[cands] @ self.llm[recent].T
            out[:, 0] = sims[:, -1]
            out[:, 1] = sims.mean(axis=1)
        return out
