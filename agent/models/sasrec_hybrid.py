"""SASRec over items represented by their ID and their text together (``sasrec-hybrid``).

Item vector = adapted frozen text vector (``TextItemEncoder``, as in ``sasrec-text``) + a
trainable ID embedding. Frequent items get a vector of their own; an item that no train row
holds has no trained ID vector, so its ID part is fixed at zero and it is scored from its text
alone (an untrained ID vector would add noise, and as a sampled negative it would only ever be
pushed down). Which items had an ID part is saved with the checkpoint; the fit report counts
the others (``items_unseen``).

Why: on food-kitchen the ID model leads, on a sparser pair (12% of the candidates unseen in
training) the text models do; neither alone covers both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.neural import ItemEncoder
from agent.models.sasrec_text import SASRecTextRecommender, TextItemEncoder

log = logging.getLogger(__name__)


class HybridItemEncoder(ItemEncoder):
    """``TextItemEncoder`` + an ID embedding that is zero for items outside ``seen``."""

    def __init__(
        self,
        table: np.ndarray,
        hidden: int,
        seen: np.ndarray,
        *,
        adapter: str = "mlp",
        width: int = 512,
        whiten: bool = True,
    ) -> None:
        super().__init__(table.shape[0] - 1, hidden)
        if seen.shape != (table.shape[0],):
            raise ValueError(f"seen has shape {seen.shape}, expected ({table.shape[0]},)")
        self.text = TextItemEncoder(table, hidden, adapter=adapter, width=width, whiten=whiten)
        self.ids = nn.Embedding(self.num_items + 1, hidden, padding_idx=0)
        nn.init.xavier_normal_(self.ids.weight)
        with torch.no_grad():
            self.ids.weight[0].zero_()
        mask = torch.from_numpy(np.asarray(seen, dtype=bool)).clone()
        mask[0] = False
        self.register_buffer("seen", mask)  # saved: the checkpoint knows which IDs trained

    def forward(self, ids: Tensor) -> Tensor:
        own = self.ids(ids) * self.get_buffer("seen")[ids].unsqueeze(-1).to(self.ids.weight.dtype)
        out: Tensor = self.text(ids) + own
        return out


def seen_items(data: Dataset) -> np.ndarray:
    """(num_items + 1,) bool: the items some train row's history holds."""
    seen = np.zeros(len(data.catalog) + 1, dtype=bool)
    for user in data.iter_split("train"):
        seen[data.catalog.encode(user.history)] = True
    seen[0] = False
    return seen


class SASRecHybridRecommender(SASRecTextRecommender):
    """sasrec-text with an ID part added to each seen item's vector (same table, settings and
    checkpoint checks; only the encoder differs)."""

    name = "sasrec-hybrid"

    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        # a checkpoint's own ``seen`` replaces this one when its state is loaded
        return HybridItemEncoder(
            self.table,
            int(config["hidden"]),
            seen_items(self.data),
            adapter=str(config["adapter"]),
            width=int(config["width"]),
            whiten=bool(config["whiten"]),
        )

    @property
    def items_unseen(self) -> int:
        """Catalogue items scored from their text alone (no ID part)."""
        encoder = self.net.items
        assert isinstance(encoder, HybridItemEncoder)
        return int(len(self.data.catalog) - encoder.get_buffer("seen").sum())

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        unseen = self.items_unseen
        log.info(
            "%s: %d of %d items never occur in training: scored from their text alone",
            self.name,
            unseen,
            len(self.data.catalog),
        )
        report = super().fit(valid_fn=valid_fn, out=out)
        report.items_unseen = unseen
        return report
