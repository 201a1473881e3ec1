"""The trainer shared by the sequential recommenders and the three methods.

Training (as in SASRec): every train row's history, cut to its last ``max_len + 1`` items, gives
``max_len`` next-item examples at once: input ids[:-1], target ids[1:], left-padded. Each
position's loss is ``train.loss`` (agent/models/ranking.py: bce by default, SASRec's binary
cross-entropy on the target and ``num_negatives`` sampled negatives; or bpr, ce,
sampled-softmax, gbce); padded positions carry no loss. Adam; the best state by ``valid_fn`` is
kept and written to the checkpoint; training stops after ``patience`` evaluations without a
gain. Only train rows train (the histories of valid/test rows are left out too).

Early stopping calls a ``ValidFn``; callers pass the evaluation harness' ``make_valid_fn``.

``fit_loop`` is the loop itself, with the loss supplied by a ``step`` function: the sequential
recommenders' is ``next_item_loss``; each method adds its own terms (contrastive
regularization, profile alignment, generalization loss, view alignment) to its ranking loss.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.distributed import DataParallel, negative_seed
from agent.models.dropout import fast_kernels
from agent.models.method_settings import RankingLossName
from agent.models.neural import NeuralRecommender, ScoringNet, SequenceNet, left_pad
from agent.models.ranking import RankingLoss, bce_loss, bf16_matmul_pays, item_counts
from agent.models.sampling import DomainNegativeSampler

__all__ = [
    "DomainNegativeSampler",
    "LengthPoolBatchSampler",
    "StepFn",
    "bce_loss",
    "fit_loop",
    "fit_sequence_model",
    "make_ranking_loss",
    "next_item_logits",
    "next_item_loss",
    "seed_everything",
    "training_sequences",
]

log = logging.getLogger(__name__)

# step(inputs, targets, row ids) -> {"loss": the total to minimise, other components...}
StepFn = Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc keep freed blocks below ``mmap_threshold`` for reuse instead of handing them
    back to the OS (once per process; False where the C library is not glibc).

    Every step allocates and frees the same large tensors (an ID table's 9 MiB gradient on
    food-kitchen); returned to the OS, each comes back as hundreds of page faults that the
    kernel must zero: ~850 faults and 10% of sasrec-id's step time on one thread. The cost
    is a resident set that does not shrink after training (the memory is reused, not grown).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and ok


def training_sequences(data: Dataset, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (rows, max_len) left-padded, from the train rows' histories.

    Only train rows: valid/test rows are left alone so their targets stay unseen.
    """
    catalog = data.catalog
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for user in data.iter_split("train"):
        ids = catalog.encode(user.history)[-(max_len + 1) :]
        if len(ids) < 2:
            continue
        inputs.append(ids[:-1])
        targets.append(ids[1:])
    return left_pad(inputs, max_len), left_pad(targets, max_len)


class LengthPoolBatchSampler:
    """Random batches of similar length, so that trimming their padding saves real work.

    Histories are short (median 6) but a random batch of 128 usually holds one long history,
    which sets the batch's width. Each epoch: shuffle, cut into pools of ``pool`` batches,
    sort each pool by length, cut it into batches, shuffle the batches. Batches stay random
    samples within a pool; positions count from the end, so trimming changes no output.
    """

    def __init__(
        self, lengths: np.ndarray, batch_size: int, generator: torch.Generator, pool: int = 50
    ) -> None:
        self.lengths = torch.from_numpy(np.asarray(lengths, dtype=np.int64))
        self.batch_size = batch_size
        self.generator = generator
        self.pool = pool

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches: list[Tensor] = []
        step = self.batch_size * self.pool
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches.extend(torch.split(chunk, self.batch_size))
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i].tolist()


def next_item_logits(
    backbone: SequenceNet,
    inputs: Tensor,
    targets: Tensor,
    negatives: Tensor,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(positive logits (P,), negative logits (P, K), hidden states (B, N, H)) at the P real
    positions (those with a target). ``transform`` maps the (P, H) states before scoring."""
    real = targets > 0
    pos_ids, neg_ids = targets[real], negatives[real]  # (P,), (P, K)
    # one encoder call for inputs, targets and negatives: a text adapter then runs once per
    # distinct item of the batch
    vectors = backbone.items(torch.cat([inputs.flatten(), pos_ids, neg_ids.flatten()]))
    n_in, n_pos = inputs.numel(), pos_ids.numel()
    hidden = backbone(inputs, vectors[:n_in].view(*inputs.shape, -1))
    h = hidden[real]  # (P, H)
    if transform is not None:
        h = transform(h)
    pos = (h * vectors[n_in : n_in + n_pos]).sum(-1)
    neg = (vectors[n_in + n_pos :].view(*neg_ids.shape, -1) @ h.unsqueeze(-1))[..., 0]
    return pos, neg, hidden


def next_item_loss(
    backbone: SequenceNet,
    inputs: Tensor,
    targets: Tensor,
    loss: RankingLoss,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """(``loss`` at the real positions, hidden states (B, N, H)) of a backbone whose user
    vector is its (``transform``-ed) hidden state and whose item vectors are ``items``."""
    real = targets > 0
    if loss.shared:  # the batch's negatives, encoded with the inputs and positives
        negatives = loss.shared_negatives()
        pos_ids = targets[real]
        n_in, n_pos = inputs.numel(), len(pos_ids)
        vectors = backbone.items(torch.cat([inputs.flatten(), pos_ids, negatives.flatten()]))
        hidden = backbone(inputs, vectors[:n_in].view(*inputs.shape, -1))
        h = hidden[real] if transform is None else transform(hidden[real])
        value = loss.from_shared(
            h, pos_ids, vectors[n_in : n_in + n_pos], negatives, vectors[n_in + n_pos :]
        )
        return value, hidden
    if not loss.full:
        negatives = loss.negatives(targets)
        pos, neg, hidden = next_item_logits(backbone, inputs, targets, negatives, transform)
        return loss.from_logits(pos, neg, targets[real], negatives[real]), hidden
    # the whole table once: the inputs are rows of it (a text adapter runs once per item)
    table = backbone.items.all_items()
    hidden = backbone(inputs, table[inputs])
    h = hidden[real] if transform is None else transform(hidden[real])
    return loss.from_table(h, targets[real], table), hidden


def make_ranking_loss(
    rec: NeuralRecommender[Any],
    inputs: np.ndarray,
    targets: np.ndarray,
    *,
    name: RankingLossName | None = None,
    num_negatives: int | None = None,
    generator: torch.Generator | None = None,
) -> RankingLoss:
    """``train.loss`` (or ``name``) for ``rec``'s catalogue, popularity from these rows, its
    negatives drawn from ``generator`` (default: one seeded with ``seed + 1``, as the BCE
    trainer always did; ``seed + 1 + rank`` on the other ranks of a data-parallel run)."""
    t = rec.settings.train
    catalog = rec.data.catalog
    chosen: RankingLossName = t.loss if name is None else name
    ce_dtype = None
    if chosen == "ce" and t.ce_bf16:
        if bf16_matmul_pays(rec.device):
            ce_dtype = torch.bfloat16
        else:
            log.warning(
                "train.ce_bf16: no native bfloat16 matmul on %s, float32 instead", rec.device
            )
    return RankingLoss(
        chosen,
        catalog.domain_of,
        counts=item_counts(targets, inputs, len(catalog)) if chosen == "sampled-softmax" else None,
        num_negatives=t.num_negatives if num_negatives is None else num_negatives,
        gbce_t=t.gbce_t,
        gbce_shared=t.gbce_shared,
        device=rec.device,
        generator=generator
        or torch.Generator(device=rec.device).manual_seed(negative_seed(rec.settings.seed)),
        ce_matmul_dtype=ce_dtype,
    )


def fit_sequence_model(
    rec: NeuralRecommender[Any],
    *,
    valid_fn: ValidFn | None = None,
    out: Path | None = None,
    inputs: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> FitReport:
    """Train a sequential recommender whose network is a ``SequenceNet``: ``train.loss`` at
    every position of the train rows (``training_sequences`` unless given), ``fit_loop``."""
    net = rec.net
    if not isinstance(net, SequenceNet):
        raise TypeError(f"{rec.name}: fit_sequence_model needs a SequenceNet, got {type(net)}")
    if inputs is None or targets is None:
        inputs, targets = training_sequences(rec.data, net.max_len)
    loss = make_ranking_loss(rec, inputs, targets)
    negatives = "the whole domain" if loss.full else f"{loss.k} negatives"
    log.info("%s: loss %s over %s per position", rec.name, loss.name, negatives)

    def step(x: Tensor, y: Tensor, _rows: Tensor) -> dict[str, Tensor]:
        return {"loss": next_item_loss(net, x, y, loss)[0]}

    return fit_loop(rec, inputs, targets, step, valid_fn=valid_fn, out=out)


def fit_loop(
    rec: NeuralRecommender[Any],
    inputs: np.ndarray,
    targets: np.ndarray,
    step: StepFn,
    **kwargs: Any,
) -> FitReport:
    """``_fit_loop`` (below) with ``train.fast_kernels`` applied for its duration."""
    with fast_kernels(rec.settings.train.fast_kernels):
        return _fit_loop(rec, inputs, targets, step, **kwargs)


def _fit_loop(
    rec: NeuralRecommender[Any],
    inputs: np.ndarray,
    targets: np.ndarray,
    step: StepFn,
    *,
    params: Iterable[nn.Parameter] | None = None,
    epochs: int | None = None,
    valid_fn: ValidFn | None = None,
    out: Path | None = None,
    eval_start: bool = False,
    label: str = "",
) -> FitReport:
    """Train ``params`` (default: all of ``rec.net``'s) for ``epochs`` (default:
    ``train.epochs``) on the rows ``inputs``/``targets`` with ``step``'s loss.

    ``step(inputs, targets, row ids)`` gets a batch with its all-padding columns dropped and
    returns the loss to minimise as ``"loss"`` and any other component; each history entry
    holds the mean of every component. ``eval_start``: score the untrained state first, so
    that training that never beats it keeps it (used for LLM-RecG's fusion phase).

    Data-parallel (a torch.distributed process group of several ranks, agent/models/
    distributed.py): every rank walks the same seeded batch order and trains on its shard of
    each batch; the gradients are averaged before each optimizer step, so the ranks' weights
    stay equal. Rank 0 alone runs ``valid_fn`` and broadcasts the score, so the best epoch
    and early stopping agree everywhere; rank 0 alone writes ``out``.
    """
    settings = rec.settings
    cfg = settings.train  # (train.threads is applied when the recommender is built)
    dp = DataParallel.current(rec.device)
    # rank 0 keeps the single-process seed; the others draw other dropout masks for their
    # rows (the batch order has its own generator below, the same on every rank)
    seed_everything(settings.seed + dp.rank)
    # Adam's moments of item rows that get no gradient decay geometrically into denormal
    # floats after ~800 steps, and CPU arithmetic on denormals is slow: without this, epoch
    # times grew 12 s -> 22 s -> 34 s on food-kitchen.
    torch.set_flush_denormal(True)
    keep_freed_memory()
    net: ScoringNet = rec.net
    epochs = cfg.epochs if epochs is None else epochs
    if len(inputs) == 0:
        raise ValueError("no train row has two known items: nothing to train on")
    dataset = TensorDataset(
        torch.from_numpy(inputs), torch.from_numpy(targets), torch.arange(len(inputs))
    )
    order = torch.Generator().manual_seed(settings.seed)
    # whole batches are indexed at once (tensor[list]) instead of collating single rows
    loader = DataLoader(
        dataset,
        sampler=LengthPoolBatchSampler((inputs > 0).sum(1), cfg.batch_size, order),
        batch_size=None,
    )
    trainable = [p for p in (net.parameters() if params is None else params) if p.requires_grad]
    dp.broadcast_module(net)  # the ranks start from rank 0's weights, as DDP would
    # fused: one kernel for the whole update; the dense item table makes the step a large
    # share of each batch's time on CPU
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    name = f"{rec.name}{' ' + label if label else ''}"
    log.info(
        "%s: %d training rows, %d trainable parameters, %d batches of %d per epoch",
        name,
        len(inputs),
        sum(p.numel() for p in trainable),
        len(loader),
        cfg.batch_size,
    )
    if dp.active:
        log.info(
            "%s: data-parallel rank %d of %d, ~%d rows of each batch",
            name,
            dp.rank,
            dp.world,
            -(-cfg.batch_size // dp.world),
        )
    report = FitReport(checkpoint=out)
    best, stale = -math.inf, 0
    best_state: dict[str, Tensor] | None = None

    def validate(entry: dict[str, float], epoch: int) -> bool:
        nonlocal best, best_state, stale
        assert valid_fn is not None
        t1 = time.perf_counter()
        net.eval()
        # the other ranks wait for rank 0's score: one evaluation, one decision for all
        score = dp.broadcast_float(float(valid_fn(rec)) if dp.main else math.nan)
        entry["valid_ndcg10"], entry["valid_seconds"] = score, time.perf_counter() - t1
        if score > best:
            best, report.best_epoch, report.best_valid_ndcg10 = score, epoch, score
            best_state, stale = copy.deepcopy(net.state_dict()), 0
            if out is not None and dp.main:
                rec.save(out)  # at once: an interrupted run keeps its best model
            return True
        stale += 1
        return False

    start, train_seconds = time.perf_counter(), 0.0
    if eval_start and valid_fn is not None:
        entry = {"epoch": 0.0}
        validate(entry, 0)
        report.history.append(entry)
    for epoch in range(1, epochs + 1):
        net.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a component may be absent from a batch (no pair in it)
        bar = tqdm(loader, desc=f"{name} {epoch}/{epochs}", leave=False, disable=None)
        for x, y, r in bar:
            if dp.active:  # before trimming: a shard may need fewer columns than its batch
                x, y, r = dp.shard(x, y, r)
            # inputs and targets are padded at the same columns; drop all-padding columns
            first = int(torch.nonzero((x > 0).any(dim=0))[0])
            x, y = x[:, first:].to(rec.device), y[:, first:].to(rec.device)
            parts = step(x, y, r)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(parts["loss"])
            dp.all_reduce_grads(trainable)
            optimizer.step()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
                counts[key] = counts.get(key, 0) + 1
            if counts["loss"] % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / counts['loss']:.4f}")
        bar.close()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        entry = {"epoch": float(epoch), "seconds": seconds}
        entry |= {key: value / counts[key] for key, value in sums.items()}
        # the loss over all ranks (every rank has it; the other components may be missing
        # from a rank's shards, so they stay this rank's means)
        entry["loss"] = dp.mean_float(entry["loss"])
        report.epochs = epoch
        report.history.append(entry)
        if valid_fn is None or epoch % cfg.eval_every:
            log.info("%s epoch %d: loss %.4f (%.1fs)", name, epoch, entry["loss"], seconds)
            continue
        improved = validate(entry, epoch)
        log.info(
            "%s epoch %d: loss %.4f (%.1fs), valid NDCG@10 %.4f%s (best %.4f at epoch %d)",
            name,
            epoch,
            entry["loss"],
            seconds,
            entry["valid_ndcg10"],
            " *" if improved else "",
            best,
            report.best_epoch,
        )
        if stale >= cfg.patience:
            log.info("%s: early stop, %d evaluations without a gain", name, stale)
            break
    else:  # every epoch ran: the budget, not early stopping, ended training
        report.budget_hit = True
        if valid_fn is not None:
            log.info(
                "%s: the %d-epoch budget ended training (best valid at epoch %d%s)",
                name,
                epochs,
                report.best_epoch,
                ": still improving" if report.best_epoch == epochs else "",
            )
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        report.best_epoch = report.epochs
        if out is not None and dp.main:
            rec.save(out)
    net.eval()
    report.seconds = time.perf_counter() - start
    report.seconds_per_epoch = train_seconds / max(report.epochs, 1)
    return report
