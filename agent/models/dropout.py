"""Dropout with a cheaper mask on CPU, for the sequential backbones (SASRec, GRU4Rec).

``torch.nn.functional.dropout`` on CPU draws its mask with ``bernoulli_``, about 8 ns per
element on one thread: in a SASRec-ID training step on food-kitchen, the nine dropouts took
a fifth of the time. Here each element's mask comes from 32 uniform random bits (half a
64-bit draw of the same default generator): keep where the bits fall below (1 - p) * 2^32,
scale kept elements by 1 / (1 - p), as torch does. The keep probability is 1 - p up to 2^-32
(``torch.rand`` is exact to 2^-24), so the model is trained the same way; only the random
stream differs from ``nn.Dropout``'s, so a seeded run draws other masks than before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SPAN = 1 << 32
# Off unless a fit runs under ``fast_kernels(True)`` (``train.fast_kernels``): seeded runs then
# draw other masks, so a figure measured before stays reproducible by default.
_FAST = False


def fast_kernels_enabled() -> bool:
    return _FAST


@contextlib.contextmanager
def fast_kernels(enabled: bool) -> Iterator[None]:
    """Within: this module's dropout mask and the fused text-adapter kernel when ``enabled``,
    torch's own otherwise."""
    global _FAST
    before, _FAST = _FAST, enabled
    try:
        yield
    finally:
        _FAST = before


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """A ``shape`` tensor of ``like``'s dtype and device: 0 with probability ``p``, else
    1 / (1 - p)."""
    threshold = round((1.0 - p) * _SPAN) - (1 << 31)  # P(bits < threshold) = 1 - p
    if threshold > (1 << 31) - 1:  # p below 2^-33: every element kept (and no int32 overflow)
        return torch.full(shape, 1.0 / (1.0 - p), dtype=like.dtype, device=like.device)
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=like.device)
    # from = int64 min, to = None: every 64-bit pattern equally likely (two 32-bit halves)
    bits = words.random_(-(1 << 63), None).view(torch.int32)[:n].view(shape)
    return (bits < threshold).to(like.dtype).mul_(1.0 / (1.0 - p))


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with ``dropout_mask``'s cheaper mask."""
    if not training or p == 0.0:
        return x
    if not _FAST:
        return F.dropout(x, p, training)
    if p >= 1.0:
        return x * 0.0
    return x * dropout_mask(x.shape, p, x)


class Dropout(nn.Module):
    """``nn.Dropout`` with ``dropout_mask``'s cheaper mask (no parameters, no state)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
