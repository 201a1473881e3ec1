"""SemaCDR (Zhang et al., 2026; ../shared/METHODS.md, "SemaCDR") as a trainable model.

Only the abstract is public, so each part is the simplest design that follows it:

- Multiview item features. View 0 is the item's own text vector (the frozen MiniLM table,
  PCA-whitened, through a trainable adapter: ``TextItemEncoder``). The LLM views are the
  item's domain-agnostic and domain-specific descriptions (``agent.items.semantics``,
  generated once and cached), embedded by the same MiniLM, whitened with the own text's
  transform (one embedding space), each through its own adapter (LayerNorm, Linear, GELU,
  Linear). Only some items have descriptions: a missing view is masked out.
- Alignment by contrastive regularization: each step, up to ``align_items`` items that have
  view k; their view-k vectors and own-text vectors are pulled together by LLM4CDSR's
  soft-target InfoNCE (``losses.view_alignment``), weight ``align_weight``.
- Adaptive fusion gate, learned and per item: w = softmax_k(g(z_k)) over the item's present
  views, g a linear score of each adapted view; the item vector is sum_k w_k z_k. With
  ``gate = false``, the mean of the present views (the ablation).
- Sequences: one SASRec (causal) trained with ``train.loss`` (BCE by default) on the mixed
  sequences and, with
  ``domain_sequences``, on each user's single-domain sub-sequences too ("behaviour sequences
  of source, target and mixed domains ... synthesised for training"); scoring reads the
  mixed history.

The checkpoint holds the LLM views' vectors (only the described items: small), so a saved
model scores the same whatever the semantics cache holds later.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.semantics import ViewVectors, item_view_vectors
from agent.models.base import FitReport, ValidFn
from agent.models.distributed import negative_seed
from agent.models.losses import view_alignment
from agent.models.method_base import MethodNet, MethodRecommender
from agent.models.method_training import train_rows
from agent.models.neural import ItemEncoder
from agent.models.sasrec import SASRec
from agent.models.sasrec_text import TextItemEncoder
from agent.models.training import make_ranking_loss, next_item_loss

log = logging.getLogger(__name__)


class MultiViewItemEncoder(ItemEncoder):
    """Own text view + sparse LLM views -> adapted views -> per-item fusion gate."""

    def __init__(
        self,
        table: np.ndarray,
        views: list[tuple[np.ndarray, np.ndarray]],
        hidden: int,
        *,
        adapter: str = "mlp",
        width: int = 512,
        whiten: bool = True,
        gate: bool = True,
    ) -> None:
        super().__init__(table.shape[0] - 1, hidden)
        self.own = TextItemEncoder(table, hidden, adapter=adapter, width=width, whiten=whiten)
        dim = self.own.get_buffer("proj").shape[1]
        self.n_views = len(views)
        for k, (ids, vectors) in enumerate(views):
            self.register_buffer(f"ids{k}", torch.as_tensor(ids, dtype=torch.long))
            self.register_buffer(f"vectors{k}", torch.as_tensor(vectors, dtype=torch.float32))
        self._index_views()
        self.register_load_state_dict_post_hook(_reindex)  # type: ignore[no-untyped-call]
        self.view_adapters = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, width), nn.GELU(), nn.Linear(width, hidden)
            )
            for _ in views
        )
        self.gate = nn.Linear(hidden, 1) if gate else None

    def _index_views(self) -> None:
        """row{k}[item] = the item's row in ``vectors{k}``, -1 without a view-k vector."""
        for k in range(self.n_views):
            ids = self.get_buffer(f"ids{k}")
            row = torch.full((self.num_items + 1,), -1, dtype=torch.long, device=ids.device)
            row[ids] = torch.arange(len(ids), device=ids.device)
            self.register_buffer(f"row{k}", row, False)

    def view(self, k: int, ids: Tensor) -> tuple[Tensor, Tensor]:
        """View k of flat ``ids``: (adapted vectors (n, hidden), present mask (n,)); view 0 is
        the own text (present for every real item), zeros where absent."""
        if k == 0:
            return self.own(ids), ids > 0
        row = self.get_buffer(f"row{k - 1}")[ids]
        has = row >= 0
        feats = self.get_buffer(f"vectors{k - 1}")[row[has]]
        feats = (feats - self.own.get_buffer("mean")) @ self.own.get_buffer("proj")
        out = torch.zeros(len(ids), self.dim, device=ids.device)
        return out.index_copy(0, torch.nonzero(has)[:, 0], self.view_adapters[k - 1](feats)), has

    def weights(self, z: Tensor, present: Tensor) -> Tensor:
        """(n, V) fusion weights over the present views; each row sums to 1."""
        present = present.clone()
        present[:, 0] = True  # padding rows: weight on the (zero) own view, never NaN
        if self.gate is None:
            w = present.float()
            return w / w.sum(-1, keepdim=True)
        logits = self.gate(z)[..., 0].T.masked_fill(~present, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def fuse(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(fused vectors (n, hidden), weights (n, V)) of flat ``ids``."""
        parts = [self.view(k, ids) for k in range(self.n_views + 1)]
        z = torch.stack([p[0] for p in parts])  # (V, n, hidden)
        w = self.weights(z, torch.stack([p[1] for p in parts], dim=-1))
        return (w.T.unsqueeze(-1) * z).sum(0), w

    def forward(self, ids: Tensor) -> Tensor:
        unique, where = torch.unique(ids, return_inverse=True)
        fused, _ = self.fuse(unique)
        return fused[where]


def _reindex(module: nn.Module, _keys: Any) -> None:
    if isinstance(module, MultiViewItemEncoder):
        module._index_views()


class SemaCDRNet(MethodNet):
    def __init__(self, encoder: MultiViewItemEncoder, network: dict[str, Any]) -> None:
        super().__init__()
        self.max_len = int(network["max_len"])
        sizes = {k: network[k] for k in ("max_len", "layers", "heads", "dropout")}
        self.backbone = SASRec(encoder, **sizes)

    @property
    def encoder(self) -> MultiViewItemEncoder:
        encoder = self.backbone.items  # not a second submodule: its state is saved once
        assert isinstance(encoder, MultiViewItemEncoder)
        return encoder

    def user_vectors(self, ids: Tensor) -> Tensor:
        return self.backbone.last_hidden(ids)

    def item_vectors(self) -> Tensor:
        return self.encoder.all_items()


class SemaCDRRecommender(MethodRecommender):
    name = "semacdr"

    def __init__(
        self,
        data: Dataset,
        settings: Settings,
        *,
        table: np.ndarray | None = None,
        views: ViewVectors | None = None,
    ) -> None:
        """``views``: view name -> (dense item ids, vectors), instead of the semantics cache."""
        super().__init__(data, settings, table=table)
        self._views = views

    def view_vectors(self) -> ViewVectors:
        if self._views is None:
            self._views, _ = item_view_vectors(self.data, self.settings, self.methods.semacdr.views)
        return self._views

    def method_config(self) -> dict[str, Any]:
        m = self.methods.semacdr
        views = self.view_vectors()
        names = [v for v in m.views if len(views.get(v, ((),))[0]) > 0]
        counts = [len(views[v][0]) for v in names]
        n_items = len(self.data.catalog)
        log.info(
            "semacdr: LLM views %s; items with each: %s of %d (the rest masked out of the gate)",
            names or "none",
            counts,
            n_items,
        )
        return {"views": names, "counts": counts, "gate": m.gate}

    def make_net(self, config: dict[str, Any]) -> SemaCDRNet:
        method, text, net = config["method"], config["text"], config["network"]
        current = self._views or {}
        views = []
        for name, count in zip(method["views"], method["counts"], strict=True):
            found = current.get(name)
            if found is None or len(found[0]) != count:  # a checkpoint's own, loaded after
                found = (np.zeros(count, np.int64), np.zeros((count, text["dim"]), np.float32))
            views.append(found)
        encoder = MultiViewItemEncoder(
            self.table,
            views,
            int(net["hidden"]),
            adapter=text["adapter"],
            width=int(text["width"]),
            whiten=bool(text["whiten"]),
            gate=bool(method["gate"]),
        )
        return SemaCDRNet(encoder, net)

    def fit(self, valid_fn: ValidFn | None = None, out: Path | None = None) -> FitReport:
        m = self.methods.semacdr
        net = self.net
        assert isinstance(net, SemaCDRNet)
        enc = net.encoder
        rows = train_rows(self.data, net.max_len, per_domain=m.domain_sequences)
        gen = torch.Generator(device=self.device).manual_seed(negative_seed(self.settings.seed))
        loss = make_ranking_loss(self, rows.inputs, rows.targets, generator=gen)
        aligned = [v for v in range(enc.n_views) if len(enc.get_buffer(f"ids{v}")) >= 2]

        def step(x: Tensor, y: Tensor, _rows: Tensor) -> dict[str, Tensor]:
            rec, _ = next_item_loss(net.backbone, x, y, loss)
            parts = {"rec": rec}
            if aligned and m.align_weight > 0:
                pairs = []
                for v in aligned:
                    ids = enc.get_buffer(f"ids{v}")
                    pick = torch.randperm(len(ids), generator=gen, device=ids.device)
                    chosen = ids[pick[: m.align_items]]
                    pairs.append((enc.view(0, chosen)[0], enc.view(v + 1, chosen)[0]))
                parts["align"] = torch.stack(
                    [view_alignment(own, [other], m.tau) for own, other in pairs]
                ).mean()
            parts["loss"] = rec + m.align_weight * parts.get("align", rec.new_zeros(()))
            return parts

        return self.train_net(rows, step, valid_fn, out)
