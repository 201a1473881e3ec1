"""Data-parallel training over ``torch.distributed``: every rank trains on its share of each
batch and the ranks average their gradients before the optimizer steps, so that with the same
start weights and the same batch order all ranks hold the same model after every step.

The launcher (Ray Train, agent/compute/train.py; or any ``init_process_group``) sets up the
process group; the trainer (agent/models/training.py) asks ``DataParallel.current()`` whether
one is there. Without one (a plain process) everything here is a no-op and training is exactly
the single-process loop.

The gradients are all-reduced explicitly rather than through DistributedDataParallel: the step
functions call the raw network (``rec.net``) and the methods add loss terms computed outside
its forward, so DDP's forward hooks would never see a forward pass to synchronise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DataParallel", "negative_seed"]


def _group_size_rank() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


@dataclass(frozen=True)
class DataParallel:
    """This process' place in a data-parallel run: ``world`` ranks, this one ``rank``.

    ``device``: where the collective buffers live (the model's device: NCCL needs CUDA
    tensors, gloo CPU ones).
    """

    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> DataParallel:
        """The default process group's world and rank (world 1 without a group)."""
        world, rank = _group_size_rank()
        return cls(world, rank, torch.device(device))

    @property
    def active(self) -> bool:
        """Whether there are other ranks to synchronise with."""
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, logs and writes the checkpoint."""
        return self.rank == 0

    def shard(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """This rank's rows of a batch (every tensor indexed alike): rows ``rank::world``, so
        the ranks together see exactly the batch the single-process loop sees.

        A batch with fewer rows than ranks gives rank ``r`` row ``r % rows``: every rank keeps
        at least one row (an empty shard has no loss to backpropagate) and every rank steps,
        so the collective calls stay paired; such a batch counts a row twice in the average.
        """
        if not self.active or not tensors:
            return tensors
        rows = len(tensors[0])
        if rows == 0:
            raise ValueError("cannot shard an empty batch")
        if rows >= self.world:
            return tuple(t[self.rank :: self.world] for t in tensors)
        pick = self.rank % rows
        return tuple(t[pick : pick + 1] for t in tensors)

    def all_reduce_grads(self, params: Sequence[nn.Parameter]) -> None:
        """Average ``params``' gradients over the ranks, in place (one ``all_reduce``).

        Every rank sends one flat float32 buffer of the same layout: a parameter without a
        gradient here (unused by this shard's loss) sends zeros, so the shapes always match.
        One extra slot per parameter counts the ranks that had a gradient: a parameter that
        none had keeps ``grad = None``, so Adam skips it as the single-process loop would
        (a zero gradient would still move it through the moments and weight decay).
        """
        if not self.active or not params:
            return
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        flat = torch.zeros(total + len(params), dtype=torch.float32, device=self.device)
        offset = 0
        for i, (p, n) in enumerate(zip(params, sizes, strict=True)):
            if p.grad is not None:
                if p.grad.is_sparse:
                    raise ValueError("all_reduce_grads needs dense gradients")
                flat[offset : offset + n] = p.grad.reshape(-1)
                flat[total + i] = 1.0
            offset += n
        dist.all_reduce(flat)
        flat[:total].div_(self.world)
        had = flat[total:].tolist()  # one device-to-host copy, not one per parameter
        offset = 0
        for p, n, ranks in zip(params, sizes, had, strict=True):
            mean = flat[offset : offset + n].view_as(p)
            offset += n
            if p.grad is not None:
                p.grad.copy_(mean)
            elif ranks > 0:
                p.grad = mean.to(p.dtype).clone()

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank, as DDP does at construction: the
        ranks build their networks from the same seed, this makes sure they start equal."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the others' ``value`` is ignored)."""
        if not self.active:
            return value
        buf = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(buf, src=0)
        return float(buf.item())

    def mean_float(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.active:
            return value
        buf = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(buf)
        return float(buf.item()) / self.world


def negative_seed(seed: int) -> int:
    """The seed of a trainer's negative sampler: ``seed + 1`` in a single process and on rank
    0 (what the trainers always used, so local runs draw the same negatives as before), and
    ``seed + 1 + rank`` on the other ranks, whose shards would otherwise all be paired with
    the same stream of negatives."""
    return seed + 1 + _group_size_rank()[1]
