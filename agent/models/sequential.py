"""The sequential recommenders: a ``SequenceNet`` backbone (SASRec or GRU4Rec) over a
pluggable item encoder, behind the ``Recommender`` interface, trained by
``agent.models.training.fit_sequence_model`` with ``train.loss``.

Variants pick the item encoder (``encoder_config``/``build_encoder``): item IDs
(``sasrec-id``, ``gru4rec``), adapted frozen text (``sasrec-text``), both (``sasrec-hybrid``).
A checkpoint's config holds the network sizes and the encoder's config, so it is rebuilt
exactly as saved whatever the current settings.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

from agent.models.base import FitReport, ValidFn
from agent.models.gru4rec import GRU4Rec
from agent.models.neural import IDItemEncoder, ItemEncoder, NeuralRecommender, SequenceNet
from agent.models.sasrec import SASRec
from agent.models.training import fit_sequence_model


class SequentialRecommender(NeuralRecommender[SequenceNet]):
    """A backbone over an item encoder; subclasses pick both."""

    # ---- what a variant provides -------------------------------------------------------
    @abstractmethod
    def encoder_config(self) -> dict[str, Any]:
        """What ``build_encoder`` needs, from the current settings and data (JSON-able)."""

    @abstractmethod
    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        """The item encoder described by ``config`` (saved in checkpoints)."""

    def check_encoder_config(self, saved: dict[str, Any], path: Path) -> None:
        """Raise ``CheckpointError`` if the saved encoder cannot run on the current inputs."""

    @abstractmethod
    def network_config(self) -> dict[str, Any]:
        """The backbone's sizes, from ``settings.train`` (JSON-able)."""

    @abstractmethod
    def build_backbone(self, encoder: ItemEncoder, network: dict[str, Any]) -> SequenceNet:
        """The backbone over ``encoder`` with the saved sizes ``network``."""

    # ---- network -------------------------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        return {
            "network": self.network_config(),
            "encoder": self.encoder_config(),
            "seed": self.settings.seed,
            "train": self.settings.train.model_dump(),
        }

    def make_net(self, config: dict[str, Any]) -> SequenceNet:
        return self.build_backbone(self.build_encoder(config["encoder"]), config["network"])

    def check_config(self, config: dict[str, Any], path: Path) -> None:
        self.check_encoder_config(config["encoder"], path)

    @property
    def network(self) -> SequenceNet:
        """``net``: the backbone, built on first use."""
        return self.net

    @property
    def max_len(self) -> int:
        return self.net.max_len

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        return fit_sequence_model(self, valid_fn=valid_fn, out=out)


class SASRecRecommender(SequentialRecommender):
    """SASRec over an item encoder: ``sasrec-id``, ``sasrec-text``, ``sasrec-hybrid``."""

    def network_config(self) -> dict[str, Any]:
        t = self.settings.train
        return {"max_len": t.max_len, "layers": t.layers, "heads": t.heads, "dropout": t.dropout}

    def build_backbone(self, encoder: ItemEncoder, network: dict[str, Any]) -> SequenceNet:
        return SASRec(encoder, **network)


class GRU4RecRecommender(SequentialRecommender):
    """GRU4Rec (Hidasi et al., ICLR 2016) over item-ID embeddings, trained like SASRec (next
    item at every position, ``train.loss``); ``train.layers`` stacked GRU layers."""

    name = "gru4rec"

    def network_config(self) -> dict[str, Any]:
        t = self.settings.train
        return {"max_len": t.max_len, "layers": t.layers, "dropout": t.dropout}

    def build_backbone(self, encoder: ItemEncoder, network: dict[str, Any]) -> SequenceNet:
        return GRU4Rec(encoder, **network)

    def encoder_config(self) -> dict[str, Any]:
        return {"num_items": len(self.data.catalog), "hidden": self.settings.train.hidden}

    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        return IDItemEncoder(int(config["num_items"]), int(config["hidden"]))
