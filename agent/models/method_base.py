"""What the three methods' recommenders share: the frozen text table, the config layout and
training through the shared loop. Building the network lazily and seeded, scoring by user
vector x item table and checkpoints are ``NeuralRecommender``'s (agent/models/neural.py), as
for the SASRec variants.

A method's network (``MethodNet``) gives a user vector per history and one vector per item;
a candidate's score is their dot product. Methods whose score is a sum of parts (LLM4CDSR:
mixed thread + the candidate's domain thread) concatenate the parts on both sides, so one
matrix product still scores every item.

The item text table is ``agent.items.embeddings.item_embeddings`` (frozen MiniLM vectors); a
checkpoint stores a few of its rows and refuses to load over other embeddings.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.method_settings import MethodSettings
from agent.models.method_training import TrainRows
from agent.models.neural import NeuralRecommender, ScoringNet
from agent.models.sasrec_text import ItemTextTable
from agent.models.training import StepFn, fit_loop


class MethodNet(ScoringNet):
    """A method's whole network; ``max_len`` bounds the histories it reads."""


class MethodRecommender(ItemTextTable, NeuralRecommender[MethodNet]):
    def __init__(
        self, data: Dataset, settings: Settings, *, table: np.ndarray | None = None
    ) -> None:
        """``table``: the item text embeddings if the caller has them already."""
        super().__init__(data, settings)
        self._table = table

    @property
    def methods(self) -> MethodSettings:
        return self.settings.methods

    # ---- what a method provides (and ``make_net``) -------------------------------------
    @abstractmethod
    def method_config(self) -> dict[str, Any]:
        """The method's part of the config (JSON-able), from the current settings and data."""

    # ---- network -----------------------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        t = self.settings.train
        return {
            "network": {
                "hidden": t.hidden,
                "max_len": t.max_len,
                "layers": t.layers,
                "heads": t.heads,
                "dropout": t.dropout,
            },
            "text": self.text_table_config("dim"),
            "method": self.method_config(),
            "seed": self.settings.seed,
            "train": t.model_dump(),
        }

    def check_config(self, config: dict[str, Any], path: Path) -> None:
        self.check_text_table(config["text"], path, "dim")

    def train_net(
        self,
        rows: TrainRows,
        step: StepFn,
        valid_fn: ValidFn | None,
        out: Path | None,
        **options: Any,
    ) -> FitReport:
        """``fit_loop`` on ``rows`` (by default over all the network's parameters for
        ``train.epochs``; ``options`` override either, and pass ``eval_start``/``label``)."""
        return fit_loop(
            self, rows.inputs, rows.targets, step, valid_fn=valid_fn, out=out, **options
        )
