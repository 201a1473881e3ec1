"""Negative samplers of the sequential trainers: every negative comes from the positive
target's own domain.

- ``DomainNegativeSampler``: uniform over the domain (SASRec's BCE, BPR, gBCE).
- ``PopularityNegativeSampler``: proportional to (train count + 1) within the domain, with the
  log-probability of every draw for the logQ correction of the sampled softmax.

The data mixes domains and evaluation ranks the target among items of its own domain. A
negative drawn from the whole catalog is, for a food target, 3 times in 4 a kitchen item,
which the model separates by domain alone: an easy negative that teaches nothing about
ranking within a domain. Same-domain negatives match the ranking task.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _grouped(domains: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item ids grouped by domain, domain sizes, offsets of each domain's group)."""
    n_domains = int(domains.max()) + 1
    ids = np.arange(1, len(domains))
    order = ids[np.argsort(domains[1:], kind="stable")]
    sizes = np.bincount(domains[1:], minlength=n_domains)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return order, sizes, offsets


class DomainNegativeSampler:
    """Uniform negatives from the positive target's own domain."""

    def __init__(self, domain_of: np.ndarray, device: torch.device | str = "cpu") -> None:
        domains = np.asarray(domain_of, dtype=np.int64)  # domain_of[0] = -1 (padding)
        order, sizes, offsets = _grouped(domains)
        self.device = torch.device(device)
        self.flat = torch.from_numpy(order).to(self.device)
        self.sizes = torch.from_numpy(sizes).to(self.device)
        self.offsets = torch.from_numpy(offsets).to(self.device)
        self.item_domain = torch.from_numpy(np.maximum(domains, 0)).to(self.device)

    def sample(self, targets: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``targets.shape + (k,)`` negative ids; 0 where the target is padding.

        A draw equal to the positive is replaced by the next item of the domain (the chance is
        1 / domain size, so the bias is negligible). Items of the user's history are not
        excluded: with thousands of items per domain they are rarely drawn.
        """
        domain = self.item_domain[targets]
        size = self.sizes[domain].unsqueeze(-1)
        offset = self.offsets[domain].unsqueeze(-1)
        u = torch.rand(
            (*targets.shape, k), generator=generator, device=targets.device, dtype=torch.float64
        )
        slot = torch.minimum((u * size).long(), size - 1)
        neg = self.flat[offset + slot]
        clash = neg == targets.unsqueeze(-1)
        neg = torch.where(clash, self.flat[offset + (slot + 1) % size], neg)
        return torch.where(targets.unsqueeze(-1) > 0, neg, torch.zeros_like(neg))


class PopularityNegativeSampler:
    """Negatives drawn with probability Q(i) = (c_i + 1) / sum_{j in domain(i)} (c_j + 1), c the
    item's count in the train rows, within the positive's domain.

    The +1 keeps items never seen in training reachable. Unlike ``DomainNegativeSampler`` a
    draw equal to the positive is kept (popular positives are drawn often, and replacing them
    would change Q); the sampled softmax masks those "accidental hits" instead.
    ``log_q[i]`` = log Q(i) is what the loss subtracts.
    """

    def __init__(
        self, domain_of: np.ndarray, counts: np.ndarray, device: torch.device | str = "cpu"
    ) -> None:
        domains = np.asarray(domain_of, dtype=np.int64)
        if len(counts) != len(domains):
            raise ValueError(f"{len(counts)} counts for {len(domains)} ids (padding included)")
        order, sizes, offsets = _grouped(domains)
        weight = np.asarray(counts, dtype=np.float64)[order] + 1.0
        # one increasing array for all domains: domain d's cumulative shares run over (d, d + 1]
        cdf = np.empty_like(weight)
        log_q = np.zeros(len(domains), dtype=np.float64)
        for d, (start, size) in enumerate(zip(offsets, sizes, strict=True)):
            w = weight[start : start + size]
            total = w.sum()
            cdf[start : start + size] = d + np.cumsum(w) / total
            cdf[start + size - 1] = d + 1.0  # exact end despite rounding
            log_q[order[start : start + size]] = np.log(w / total)
        self.device = torch.device(device)
        self.flat = torch.from_numpy(order).to(self.device)
        self.cdf = torch.from_numpy(cdf).to(self.device)
        self.ends = torch.from_numpy(offsets + sizes - 1).to(self.device)
        self.item_domain = torch.from_numpy(np.maximum(domains, 0)).to(self.device)
        self.log_q = torch.from_numpy(log_q.astype(np.float32)).to(self.device)

    def sample(self, targets: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``targets.shape + (k,)`` negative ids drawn from Q; 0 where the target is padding."""
        domain = self.item_domain[targets].unsqueeze(-1)
        u = torch.rand(
            (*targets.shape, k), generator=generator, device=targets.device, dtype=torch.float64
        )
        slot = torch.searchsorted(self.cdf, domain + u, right=True)
        slot = torch.minimum(slot, self.ends[domain])  # u rounding up to 1.0
        neg = self.flat[slot]
        return torch.where(targets.unsqueeze(-1) > 0, neg, torch.zeros_like(neg))
