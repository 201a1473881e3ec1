"""SASRec over item ids: the original model, one free embedding per item.

Items that never occur in training are only ever seen as sampled negatives, so this model
cannot score them meaningfully; the text variant can.
"""

from __future__ import annotations

from typing import Any

from agent.models.neural import IDItemEncoder, ItemEncoder
from agent.models.sequential import SASRecRecommender


class SASRecIDRecommender(SASRecRecommender):
    name = "sasrec-id"

    def encoder_config(self) -> dict[str, Any]:
        return {"num_items": len(self.data.catalog), "hidden": self.settings.train.hidden}

    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        return IDItemEncoder(int(config["num_items"]), int(config["hidden"]))
