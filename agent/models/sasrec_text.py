"""SASRec over frozen text embeddings of the items: the item-level idea of LLM4CDSR.

Each item is its text embedding (``agent.items.embeddings.item_embeddings``, frozen) passed
through a small trainable adapter to the model size. There is no per-item trainable
parameter, on purpose: an item never seen in training is scored from its text like any other,
and both domains live in one text space.

Item encoder: table row -> PCA whitening (fixed, from the table; ``train.text_whiten``) ->
adapter (``train.text_adapter``):
- ``mlp`` (default): LayerNorm(d) -> Linear(d, width) -> GELU -> Linear(width, hidden).
- ``linear``: LayerNorm(d) -> Linear(d, hidden). LLM4CDSR's adapter is Linear(1024, 512) ->
  Linear(512, 128) with no nonlinearity, i.e. one linear map of rank <= 512: this is that map.
No dropout on the adapter input (it cost a third of the step time and did not help); the
backbone keeps its dropout.

Why these defaults (food-kitchen, MiniLM title vectors, valid NDCG@10 with 999 sampled
negatives after 5 epochs; ID SASRec: 0.13 at that point): linear 0.034; mlp width 128 0.053,
512 0.070, 1024 0.084, two hidden layers of 512 0.086; whitened + mlp 512 0.114. A text-only
item must be told apart from its same-domain negatives by its text alone, so the adapter's
capacity, and the scale of the small directions of the text space, decide how well it does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.checkpoint import CheckpointError
from agent.models.dropout import fast_kernels_enabled
from agent.models.neural import ItemEncoder
from agent.models.sequential import SASRecRecommender

# Rows of the embedding table stored in the checkpoint to detect other item embeddings.
_PROBE_ROWS = 8
_PROBE_ATOL = 1e-3


class TextItemEncoder(ItemEncoder):
    """Frozen text vectors -> PCA whitening (fixed) -> trainable adapter -> ``hidden``."""

    def __init__(
        self,
        table: np.ndarray,
        hidden: int,
        *,
        adapter: str = "mlp",
        width: int = 512,
        whiten: bool = True,
    ) -> None:
        super().__init__(table.shape[0] - 1, hidden)
        dim = int(table.shape[1])
        # the table is a buffer, not a parameter: frozen, and left out of the state dict (it is
        # rebuilt from the embedding cache); the whitening is saved, so a checkpoint does not
        # depend on recomputing an SVD (whose signs are arbitrary) the same way
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table)), False)
        mean, proj = whitening(table[1:]) if whiten else identity(dim)
        dim = proj.shape[1]  # fewer when the items span fewer directions than d
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("proj", torch.from_numpy(proj))
        self.register_buffer("features", self._features(), False)
        self.register_load_state_dict_post_hook(_refresh_features)  # type: ignore[no-untyped-call]
        layers: list[nn.Module] = [nn.LayerNorm(dim)]
        if adapter == "linear":
            layers.append(nn.Linear(dim, hidden))
        elif adapter == "mlp":
            layers += [nn.Linear(dim, width), nn.GELU(), nn.Linear(width, hidden)]
        else:
            raise ValueError(f"unknown text adapter {adapter!r} (linear or mlp)")
        self.adapter = nn.Sequential(*layers)

    def _features(self) -> Tensor:
        table, mean, proj = (self.get_buffer(n) for n in ("table", "mean", "proj"))
        feats = (table - mean) @ proj
        feats[0] = 0.0
        return feats

    def forward(self, ids: Tensor) -> Tensor:
        # A batch names each item many times (inputs, targets, negatives, padding): adapt each
        # distinct id once, then spread the rows back.
        unique, where = torch.unique(ids, return_inverse=True)
        adapted = self.adapt(self.get_buffer("features")[unique])
        adapted = adapted * (unique > 0).unsqueeze(-1).to(adapted.dtype)  # padding stays zero
        out: Tensor = adapted[where]
        return out

    def adapt(self, features: Tensor) -> Tensor:
        """``self.adapter(features)``; in training, an adapter that opens with LayerNorm ->
        Linear runs those two as ``layer_norm_linear`` (the same map, a third fewer matmuls)."""
        layers = list(self.adapter)
        if fast_kernels_enabled() and torch.is_grad_enabled() and len(layers) >= 2:
            norm, linear = layers[0], layers[1]
            if (
                isinstance(norm, nn.LayerNorm)
                and isinstance(linear, nn.Linear)
                and norm.weight is not None
                and norm.bias is not None
                and linear.bias is not None
            ):
                with torch.no_grad():  # the frozen features: no gradient to them
                    normed = F.layer_norm(features, norm.normalized_shape, eps=norm.eps)
                out = layer_norm_linear(normed, norm.weight, norm.bias, linear.weight, linear.bias)
                for layer in layers[2:]:
                    out = layer(out)
                return out
        adapted: Tensor = self.adapter(features)
        return adapted


class _LayerNormLinear(torch.autograd.Function):
    """Linear(LayerNorm(x)) from x already normalised (``normed``, no gradient):

        y = W (g * normed + b) + c = normed (W diag(g))^T + (W b + c)

    The backward needs one (out x rows) @ (rows x d) matmul, M = dy^T normed, for all four
    gradients: dW = M diag(g) + (sum dy) b^T, dg = sum_rows (W * M), db = W^T sum dy,
    dc = sum dy. Autograd through LayerNorm then Linear takes two such matmuls (dW and the
    gradient of the LayerNorm output) plus the LayerNorm's own passes: sasrec-text's text
    adapter (d 384 -> 512 on every distinct item of a batch) is most of its step.
    """

    @staticmethod
    def forward(
        ctx: Any, normed: Tensor, gain: Tensor, shift: Tensor, weight: Tensor, bias: Tensor
    ) -> Tensor:
        ctx.save_for_backward(normed, gain, shift, weight)
        return torch.addmm(torch.addmv(bias, weight, shift), normed, (weight * gain).T)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor, Tensor, Tensor]:
        normed, gain, shift, weight = ctx.saved_tensors
        total = grad.sum(0)  # (out,)
        m = grad.T @ normed  # (out, d)
        grad_weight = torch.addr(m * gain, total, shift)
        return None, (weight * m).sum(0), weight.T @ total, grad_weight, total


def layer_norm_linear(
    normed: Tensor, gain: Tensor, shift: Tensor, weight: Tensor, bias: Tensor
) -> Tensor:
    """``F.linear(gain * normed + shift, weight, bias)`` for a ``normed`` (rows, d) that takes
    no gradient (``F.layer_norm`` of frozen features, without affine), with a cheaper
    backward (``_LayerNormLinear``)."""
    out: Tensor = _LayerNormLinear.apply(normed, gain, shift, weight, bias)  # type: ignore[no-untyped-call]
    return out


def _refresh_features(module: nn.Module, _keys: Any) -> None:
    # load_state_dict replaced mean/proj: the derived (unsaved) features must follow
    if isinstance(module, TextItemEncoder):
        module.features = module._features()


def identity(dim: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(dim, dtype=np.float32), np.eye(dim, dtype=np.float32)


def whitening(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) so that ``(x - mean) @ projection`` has uncorrelated unit-variance
    coordinates (PCA whitening, all components kept).

    Sentence embeddings are anisotropic: a few directions carry most of the variance and the
    rest, where items differ in detail, is squeezed. Whitening gives every direction the same
    scale, and the adapter learned much faster from it (food-kitchen, valid NDCG@10 after 5
    epochs: 0.11 whitened vs 0.07 not; keeping only the top 256 or 128 components: 0.10, 0.07,
    so the small components matter).
    """
    x = vectors.astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    # eigenvectors of the d x d covariance: 20x faster than an SVD of the n x d table
    var, vecs = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
    var, vecs = var[::-1], vecs[:, ::-1]  # largest first
    keep = var > 1e-12 * var[0]  # directions the items do not span would be pure noise
    proj = vecs[:, keep] / np.sqrt(var[keep])
    return mean.astype(np.float32), proj.astype(np.float32)


def _probe_ids(n_items: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(1, n_items, _PROBE_ROWS)})


class ItemTextTable:
    """Mixin of the recommenders that read the frozen item text table: the table (computed on
    first use unless given as ``_table``), and what a checkpoint keeps of it to refuse other
    item embeddings (the embedding settings, the dimension and a few rows)."""

    data: Dataset
    settings: Settings
    _table: np.ndarray | None

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

    def text_table_config(self, dim_key: str) -> dict[str, Any]:
        """The text part of a checkpoint's config: the adapter settings, the table's dimension
        (under ``dim_key``), the embedding that made it and its probe rows."""
        t = self.settings.train
        e = self.settings.embedding
        table = self.table
        probe = _probe_ids(table.shape[0] - 1)
        return {
            "adapter": t.text_adapter,
            "width": t.text_adapter_width,
            "whiten": t.text_whiten,
            dim_key: int(table.shape[1]),
            "embedding": {"backend": e.backend, "model": e.model, "template": e.template},
            "probe_ids": probe,
            "probe": table[probe].round(5).tolist(),
        }

    def check_text_table(self, saved: dict[str, Any], path: Path, dim_key: str) -> None:
        """Raise ``CheckpointError`` unless the table matches ``saved`` (a
        ``text_table_config``)."""
        table = self.table
        emb = saved.get("embedding", {})
        hint = (
            f"the checkpoint used embedding {emb.get('backend')}/{emb.get('model')} with "
            f"template {emb.get('template')}; set the same embedding settings"
        )
        if table.shape[1] != saved[dim_key]:
            raise CheckpointError(
                f"item embeddings have dimension {table.shape[1]}, the checkpoint "
                f"{saved[dim_key]}: {hint}",
                path=path,
            )
        probe = np.asarray(saved["probe"], dtype=np.float32)
        if not np.allclose(table[saved["probe_ids"]], probe, atol=_PROBE_ATOL):
            raise CheckpointError(
                f"the item embeddings differ from those the checkpoint was trained on: {hint}",
                path=path,
            )


class SASRecTextRecommender(ItemTextTable, SASRecRecommender):
    name = "sasrec-text"

    def __init__(
        self, data: Dataset, settings: Settings, *, table: np.ndarray | None = None
    ) -> None:
        """``table``: the item embeddings if the caller has them already (else computed)."""
        super().__init__(data, settings)
        self._table = table

    def encoder_config(self) -> dict[str, Any]:
        return {"hidden": self.settings.train.hidden, **self.text_table_config("text_dim")}

    def build_encoder(self, config: dict[str, Any]) -> ItemEncoder:
        return TextItemEncoder(
            self.table,
            int(config["hidden"]),
            adapter=str(config["adapter"]),
            width=int(config["width"]),
            whiten=bool(config["whiten"]),
        )

    def check_encoder_config(self, saved: dict[str, Any], path: Path) -> None:
        self.check_text_table(saved, path, "text_dim")
