"""The interface every recommender implements, trained or not.

A recommender scores candidate items for a history. The evaluation harness, the batch scoring
command and (later) the two-stage pipeline only talk to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset

# Score given to a candidate the model cannot know (not in the item catalog): ranks last.
UNKNOWN_ITEM_SCORE = -1.0e30


@dataclass
class FitReport:
    """What training did: epochs run, best validation metric, time, the checkpoint written.

    ``best_epoch``: the epoch of the best valid NDCG@10 (the checkpoint's); ``budget_hit``:
    training ran all ``train.epochs`` without early stopping (with ``best_epoch == epochs``
    the model was still improving); ``items_unseen``: catalogue items no train row holds
    (models that report it score them from their text alone).
    """

    epochs: int = 0
    best_epoch: int = 0
    budget_hit: bool = False
    items_unseen: int | None = None
    best_valid_ndcg10: float = float("nan")
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


# valid_fn(model) -> NDCG@10 on the validation users; used for early stopping.
ValidFn = Callable[["Recommender"], float]


class Recommender(ABC):
    name: ClassVar[str]
    trainable: ClassVar[bool] = False
    uses_train_loss: ClassVar[bool] = False  # trained with ``train.loss``

    def __init__(self, data: Dataset, settings: Settings) -> None:
        self.data = data
        self.settings = settings

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        """Train (no-op for untrained models); write the best checkpoint to ``out``."""
        return FitReport()

    @abstractmethod
    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """One float array per user, one score per candidate in the given order.

        Unknown history items are ignored; unknown candidates get ``UNKNOWN_ITEM_SCORE``.
        Higher is better.
        """

    def save(self, path: Path) -> None:
        """Write a checkpoint (trained models)."""
        raise NotImplementedError(f"{self.name} has no checkpoint")

    def load(self, path: Path) -> None:
        """Read a checkpoint written by ``save``."""
        raise NotImplementedError(f"{self.name} has no checkpoint")
