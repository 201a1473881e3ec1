"""The correction head: a small network over frozen LLM states that corrects the retriever.

For a user's retrieved list (RANKING.md, "what works with little compute", 1-3):

    logit_i = retriever_score_i / tau + head([u, c_i, u * c_i, features_i])

- ``c_i``: the candidate's cached LLM state (``agent/items/llm_states.py``), projected;
- ``u``: the user's state, the recency-weighted mean of the LLM states of the recent history
  items (decay ``DECAY`` per step), projected the same way. Encoding every train user's
  history text through the LLM instead would cost ~200 tokens a user, 10M tokens for the
  51k train rows: hours on this CPU, while the item states are read once per item;
- ``features_i``: the learned ranker's per-candidate features, standardised;
- ``tau``: fixed before training, the temperature under which the retriever's own scores
  best explain the train groups' labels (``fit_tau``).

Trained with a softmax over the list and the retriever logit as a fixed offset, so training
starts at the retriever's own loss and copying its order gains nothing; the head's last layer
starts at zero, so an untrained head returns the retrieval order exactly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent.llm.backend import LLMBackend
from agent.models.base import Recommender
from agent.rerank.base import Reranker, RerankRequest, RerankResult
from agent.rerank.features import HISTORY_ITEMS, FeatureBuilder
from agent.rerank.ranker import request_features, scored_result

log = logging.getLogger(__name__)

DECAY = 0.8
WEIGHTS_FILE = "head.pt"
CARD_FILE = "card.json"


class HeadError(ValueError):
    """A head folder that cannot be used."""


def user_states(states: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """(len(histories), d): recency-weighted means of the histories' item states (unit rows)."""
    out = np.zeros((len(histories), states.shape[1]), dtype=np.float32)
    for row, ids in enumerate(histories):
        if len(ids) == 0:
            continue
        weights = DECAY ** np.arange(len(ids) - 1, -1, -1, dtype=np.float64)
        out[row] = (weights[:, None] * states[ids]).sum(0) / weights.sum()
    return out


class CorrectionHead(nn.Module):
    """head([u, c, u*c, f]) per candidate; zero at initialisation (see the module docstring)."""

    def __init__(self, state_dim: int, feature_dim: int, proj: int = 32, hidden: int = 64):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(state_dim), nn.Linear(state_dim, proj))
        self.mlp = nn.Sequential(
            nn.Linear(3 * proj + feature_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.config = {
            "state_dim": state_dim,
            "feature_dim": feature_dim,
            "proj": proj,
            "hidden": hidden,
        }

    def forward(self, user: Tensor, items: Tensor, features: Tensor) -> Tensor:
        """user (B, D), items (B, N, D), features (B, N, F) -> (B, N) corrections."""
        u = self.proj(user).unsqueeze(1).expand(-1, items.shape[1], -1)
        c = self.proj(items)
        out: Tensor = self.mlp(torch.cat([u, c, u * c, features], dim=-1)).squeeze(-1)
        return out


def offset_logits(scores: Tensor, tau: float, correction: Tensor) -> Tensor:
    """The list's logits: the retriever's scores / tau as a fixed offset, plus the head."""
    return scores / tau + correction


def offset_loss(scores: Tensor, tau: float, correction: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy of the labelled candidate over each list (B, N)."""
    logits = offset_logits(scores, tau, correction)
    return -(torch.log_softmax(logits, dim=-1) * labels).sum(-1).mean()


def fit_tau(scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature under which softmax(scores / tau) best predicts the labels (grid)."""
    s = torch.from_numpy(scores.astype(np.float64))
    y = torch.from_numpy(labels.astype(np.float64))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    losses = [float(-(torch.log_softmax(s / t, -1) * y).sum(-1).mean()) for t in grid]
    return float(grid[int(np.argmin(losses))])


@dataclass
class HeadCard:
    features: list[str]
    llm_states: str
    tau: float
    mean: list[float]
    std: list[float]
    config: dict[str, int]
    top_n: int
    retriever: str
    valid: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    extra_retrievers: list[str] = field(default_factory=list)  # their scores are features


def save_head(folder: Path, head: CorrectionHead, card: HeadCard) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / WEIGHTS_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card.__dict__, indent=1), encoding="utf-8")
    return folder


def read_head(folder: Path) -> tuple[CorrectionHead, HeadCard]:
    if not (folder / CARD_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise HeadError(
            f"no trained correction head in {folder}: train one with `recbridge ranker head`"
        )
    card = HeadCard(**json.loads((folder / CARD_FILE).read_text(encoding="utf-8")))
    head = CorrectionHead(**card.config)
    head.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
    head.eval()
    return head, card


class HeadBatch:
    """Tensors for lists of one length N: scores (B, N), states, standardised features."""

    def __init__(
        self,
        scores: np.ndarray,
        features: np.ndarray,
        items: np.ndarray,
        histories: Sequence[np.ndarray],
        states: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
    ) -> None:
        b, n = scores.shape
        self.scores = torch.from_numpy(scores.astype(np.float32))
        feats = (features.reshape(b, n, -1) - mean) / std
        self.features = torch.from_numpy(feats.astype(np.float32))
        self.items = torch.from_numpy(states[items.reshape(b, n)])
        self.user = torch.from_numpy(user_states(states, histories))

    def corrections(self, head: CorrectionHead) -> Tensor:
        out: Tensor = head(self.user, self.items, self.features)
        return out


class HeadReranker(Reranker):
    """Serves a trained correction head; no LLM call (the states are cached)."""

    name = "head"
    history_items = HISTORY_ITEMS

    def __init__(
        self,
        backend: LLMBackend | None,
        builder: FeatureBuilder,
        states: np.ndarray,
        head: CorrectionHead,
        card: HeadCard,
        *,
        folder: Path | None = None,
        extra: Sequence[Recommender] = (),
    ) -> None:
        super().__init__(backend)
        if builder.names != card.features:
            raise HeadError(
                f"head {folder}: trained on features {card.features}, got {builder.names}"
            )
        self.builder = builder
        self.states = states
        self.head = head
        self.card = card
        self.folder = folder
        self.extra = list(extra)
        self.top_n = card.top_n
        self.mean = np.asarray(card.mean, dtype=np.float32)
        self.std = np.asarray(card.std, dtype=np.float32)

    async def arerank_batch(self, requests: Sequence[RerankRequest]) -> list[RerankResult]:
        return [self._one(r) for r in requests]

    def _one(self, request: RerankRequest) -> RerankResult:
        started = time.perf_counter()
        ids = request.candidate_ids
        feats = request_features(self.builder, request, self.extra)
        index = self.builder.data.catalog.index
        batch = HeadBatch(
            np.asarray([[c.score for c in request.candidates]], dtype=np.float64),
            feats,
            np.asarray([index.get(i, 0) for i in ids]),
            [self.builder.recent_ids(request.history_ids)],
            self.states,
            self.mean,
            self.std,
        )
        with torch.inference_mode():
            logits = offset_logits(batch.scores, self.card.tau, batch.corrections(self.head))[0]
        return scored_result(request, self.name, logits.tolist(), started)

    def describe(self) -> dict[str, Any]:
        return {
            "reranker": self.name,
            "head": str(self.folder) if self.folder else None,
            "llm_states": self.card.llm_states,
            "tau": self.card.tau,
        }


def load_head_reranker(
    folder: Path, backend: LLMBackend | None, data: Any, settings: Any
) -> HeadReranker:
    from agent.items.llm_states import load_item_states
    from agent.models.prepare import prepare_model
    from agent.rerank.ranker import feature_builder_for

    head, card = read_head(folder)
    builder = feature_builder_for(data, settings, card.llm_states, card.extra_retrievers)
    states = load_item_states(data, settings, card.llm_states)
    extra = [prepare_model(n, data, settings).model for n in card.extra_retrievers]
    return HeadReranker(backend, builder, states, head, card, folder=folder, extra=extra)
