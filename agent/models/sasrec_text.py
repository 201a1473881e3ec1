"""SASRec over frozen text embeddings of the items: the item-level idea of LLM4CDSR.

Each item is its text embedding (``agent.items.embeddings.item_embeddings``, frozen) passed
through a small trainable adapter to the model size. There is no per-item trainable
parameter, on purpose: an item never seen in training is scored from its text like any other,
and both domains live in one text space.

Adapter (``train.text_adapter``):
- ``linear``: LayerNorm(d) -> Dropout -> Linear(d, hidden). LLM4CDSR's adapter is
  Linear(1024, 512) -> Linear(512, 128) with no nonlinearity, which is one linear map of
  rank <= 512; we use the single linear map it equals. The LayerNorm puts the unit-length
  sentence embeddings (per-dimension spread ~ 1/sqrt(d)) on the scale the backbone expects.
- ``mlp`` (default): LayerNorm(d) -> Dropout -> Linear(d, 2h) -> GELU -> Linear(2h, hidden):
  a nonlinearity lets the model pull apart items whose texts are close but whose
  co-occurrence differs; it scored higher than ``linear`` on food-kitchen (see the report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.checkpoint import CheckpointError
from agent.models.sasrec import ItemEncoder, SASRecRecommender

# Rows of the embedding table stored in the checkpoint to detect other item embeddings.
_PROBE_ROWS = 8
_PROBE_ATOL = 1e-3


class TextItemEncoder(ItemEncoder):
    def __init__(
        self, table: np.ndarray, hidden: int, *, adapter: str = "mlp", dropout: float = 0.0
    ) -> None:
        super().__init__(table.shape[0] - 1, hidden)
        dim = int(table.shape[1])
        # a buffer, not a parameter: frozen, and not in the state dict (rebuilt from the cache)
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table)), False)
        layers: list[nn.Module] = [nn.LayerNorm(dim), nn.Dropout(dropout)]
        if adapter == "linear":
            layers.append(nn.Linear(dim, hidden))
        elif adapter == "mlp":
            layers += [nn.Linear(dim, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)]
        else:
            raise ValueError(f"unknown text adapter {adapter!r} (linear or mlp)")
        self.adapter = nn.Sequential(*layers)

    def forward(self, ids: Tensor) -> Tensor:
        # A batch names each item many times (inputs, targets, negatives, padding): adapt each
        # distinct id once, then spread the rows back.
        unique, where = torch.unique(ids, return_inverse=True)
        adapted: Tensor = self.adapter(self.get_buffer("table")[unique])
        adapted = adapted * (unique > 0).unsqueeze(-1).to(adapted.dtype)  # padding stays zero
        return adapted[where]


def _probe_ids(n_items: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(1, n_items, _PROBE_ROWS)})


class SASRecTextRecommender(SASRecRecommender):
    name = "sasrec-text"

    def __init__(
        self, data: Dataset, settings: Settings, *, table: np.ndarray | None = None
    ) -> None:
        """``table``: the item embeddings if the caller has them already (else computed)."""
        super().__init__(data, settings)
        self._table = table

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            from agent.items.embeddings import item_embeddings  # loads the embedding stack

            self._table = item_embeddings(self.data, self.settings)
        if self._table.shape[0] != len(self.data.catalog) + 1:
            raise ValueError(
                f"item embeddings have {self._table.shape[0]} rows, expected "
                f"{len(self.data.catalog) + 1} (catalog + padding)"
            )
        return self._table

    def encoder_config(self) -> dict[str, Any]:
        t = self.settings.train
        e = self.settings.embedding
        table = self.table
        probe = _probe_ids(table.shape[0] - 1)
        return {
            "hidden": t.hidden,
            "adapter": t.text_adapter,
            "dropout": t.dropout,
            "text_dim": int(table.shape[1]),
            "embedding": {"backend": e.backend, "model": e.model, "template": e.template},
            "probe_ids": probe,
            "probe": table[probe].round(5).tolist(),
        }

    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        return TextItemEncoder(
            self.table,
            int(config["hidden"]),
            adapter=str(config["adapter"]),
            dropout=float(config["dropout"]),
        )

    def check_encoder_config(self, saved: dict[str, Any], path: Path) -> None:
        table = self.table
        emb = saved.get("embedding", {})
        hint = (
            f"the checkpoint used embedding {emb.get('backend')}/{emb.get('model')} with "
            f"template {emb.get('template')}; set the same embedding settings"
        )
        if table.shape[1] != saved["text_dim"]:
            raise CheckpointError(
                f"item embeddings have dimension {table.shape[1]}, the checkpoint "
                f"{saved['text_dim']}: {hint}",
                path=path,
            )
        probe = np.asarray(saved["probe"], dtype=np.float32)
        if not np.allclose(table[saved["probe_ids"]], probe, atol=_PROBE_ATOL):
            raise CheckpointError(
                f"the item embeddings differ from those the checkpoint was trained on: {hint}",
                path=path,
            )
