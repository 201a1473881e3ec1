"""What the three methods' recommenders share: the frozen text table, a network built lazily
and seeded, scoring by user vector x item table, checkpoints.

A method's network (``MethodNet``) gives a user vector per history and one vector per item;
a candidate's score is their dot product. Methods whose score is a sum of parts (LLM4CDSR:
mixed thread + the candidate's domain thread) concatenate the parts on both sides, so one
matrix product still scores every item.

The item text table is ``agent.items.embeddings.item_embeddings`` (frozen MiniLM vectors); a
checkpoint stores a few of its rows and refuses to load over other embeddings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent.config import ConfigError, Settings
from agent.data.schema import Dataset
from agent.models.base import UNKNOWN_ITEM_SCORE, FitReport, Recommender, ValidFn
from agent.models.checkpoint import CheckpointError, read_config, write_config
from agent.models.method_settings import MethodSettings
from agent.models.method_training import StepFn, TrainRows, fit_loop
from agent.models.sasrec import MODEL_FILE, left_pad, trim_left_padding
from agent.models.sasrec_text import _PROBE_ATOL, _probe_ids


class MethodNet(nn.Module, ABC):
    """A method's whole network; ``max_len`` bounds the histories it reads."""

    max_len: int

    @abstractmethod
    def user_vectors(self, ids: Tensor) -> Tensor:
        """(B, N) left-padded histories -> (B, U) user vectors."""

    @abstractmethod
    def item_vectors(self) -> Tensor:
        """(num_items + 1, U): row i scores dense item i (row 0, padding, is never scored)."""


class MethodRecommender(Recommender, ABC):
    trainable = True

    def __init__(
        self, data: Dataset, settings: Settings, *, table: np.ndarray | None = None
    ) -> None:
        """``table``: the item text embeddings if the caller has them already."""
        super().__init__(data, settings)
        if settings.train.threads > 0:
            torch.set_num_threads(settings.train.threads)
        self.device = torch.device(settings.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available")
        self._table = table
        self._net: MethodNet | None = None
        self._config: dict[str, Any] | None = None

    @property
    def methods(self) -> MethodSettings:
        return self.settings.methods

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

    # ---- what a method provides --------------------------------------------------------
    @abstractmethod
    def method_config(self) -> dict[str, Any]:
        """The method's part of the config (JSON-able), from the current settings and data."""

    @abstractmethod
    def make_net(self, config: dict[str, Any]) -> MethodNet:
        """The untrained network ``config`` describes (called under a fixed seed)."""

    # ---- network -----------------------------------------------------------------------
    def default_config(self) -> dict[str, Any]:
        t = self.settings.train
        table = self.table
        probe = _probe_ids(table.shape[0] - 1)
        e = self.settings.embedding
        return {
            "network": {
                "hidden": t.hidden,
                "max_len": t.max_len,
                "layers": t.layers,
                "heads": t.heads,
                "dropout": t.dropout,
            },
            "text": {
                "dim": int(table.shape[1]),
                "adapter": t.text_adapter,
                "width": t.text_adapter_width,
                "whiten": t.text_whiten,
                "embedding": {"backend": e.backend, "model": e.model, "template": e.template},
                "probe_ids": probe,
                "probe": table[probe].round(5).tolist(),
            },
            "method": self.method_config(),
            "seed": self.settings.seed,
            "train": t.model_dump(),
        }

    def build(self, config: dict[str, Any]) -> MethodNet:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config["seed"]))
            net = self.make_net(config)
        self._config = config
        self._net = net.to(self.device)
        return self._net

    @property
    def net(self) -> MethodNet:
        if self._net is None:
            return self.build(self.default_config())
        return self._net

    @property
    def config(self) -> dict[str, Any]:
        self.net  # noqa: B018  (builds it)
        assert self._config is not None
        return self._config

    def train_net(
        self,
        rows: TrainRows,
        step: StepFn,
        valid_fn: ValidFn | None,
        out: Path | None,
        **options: Any,
    ) -> FitReport:
        """``fit_loop`` over all the network's parameters for ``train.epochs`` (``options``
        override either, and pass ``eval_start``/``label``)."""
        kwargs: dict[str, Any] = {
            "params": self.net.parameters(),
            "epochs": self.settings.train.epochs,
        }
        kwargs |= options
        return fit_loop(self, self.net, rows, step, valid_fn=valid_fn, out=out, **kwargs)

    # ---- Recommender -------------------------------------------------------------------
    def encode_histories(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """Dense ids, unknown items dropped, last ``max_len`` kept, left-padded."""
        catalog = self.data.catalog
        return left_pad([catalog.encode(h) for h in histories], self.net.max_len)

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[Sequence[str]], batch_size: int = 512) -> Tensor:
        net = self.net
        was_training = net.training
        net.eval()
        try:
            ids = torch.from_numpy(self.encode_histories(histories))
            parts = [
                net.user_vectors(trim_left_padding(ids[s : s + batch_size]).to(self.device))
                for s in range(0, len(ids), batch_size)
            ]
        finally:
            net.train(was_training)
        if not parts:
            return torch.zeros(0, 1, device=self.device)
        return torch.cat(parts)

    @torch.no_grad()
    def item_table(self) -> Tensor:
        net = self.net
        was_training = net.training
        net.eval()
        try:
            return net.item_vectors()
        finally:
            net.train(was_training)

    def score(
        self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
        if not histories:
            return []
        index = self.data.catalog.index
        table = self.item_table()
        encoded: dict[int, np.ndarray] = {}  # one encoding per shared candidate list object
        out: list[np.ndarray] = []
        batch = 512
        for start in range(0, len(histories), batch):
            users = self.user_vectors(histories[start : start + batch], batch_size=batch)
            all_scores = (users @ table.T).float().cpu().numpy()
            for row, cands in zip(all_scores, candidates[start : start + batch], strict=True):
                ids = encoded.get(id(cands))
                if ids is None:
                    ids = np.fromiter((index.get(c, 0) for c in cands), np.int64, len(cands))
                    encoded[id(cands)] = ids
                scores = row[ids].astype(np.float64)
                scores[ids == 0] = UNKNOWN_ITEM_SCORE
                out.append(scores)
        return out

    def save(self, path: Path) -> None:
        net = self.net
        write_config(path, self.name, self.data.catalog, self.config)
        torch.save(net.state_dict(), path / MODEL_FILE)

    def load(self, path: Path) -> None:
        config = read_config(path, self.name, self.data.catalog)
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise CheckpointError(f"no {MODEL_FILE}", path=path)
        self.check_text_table(config["text"], path)
        net = self.build(config)
        state = torch.load(model_path, map_location=self.device, weights_only=True)
        net.load_state_dict(state)

    def check_text_table(self, saved: dict[str, Any], path: Path) -> None:
        table = self.table
        emb = saved.get("embedding", {})
        hint = (
            f"the checkpoint used embedding {emb.get('backend')}/{emb.get('model')} with "
            f"template {emb.get('template')}; set the same embedding settings"
        )
        probe = np.asarray(saved["probe"], dtype=np.float32)
        if table.shape[1] != saved["dim"] or not np.allclose(
            table[saved["probe_ids"]], probe, atol=_PROBE_ATOL
        ):
            raise CheckpointError(
                f"the item embeddings differ from those the checkpoint was trained on: {hint}",
                path=path,
            )
