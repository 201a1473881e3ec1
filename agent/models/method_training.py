"""The training loop of the three methods: the SASRec trainer's loop (agent/models/training.py)
with the loss supplied by the method, so each method adds its own terms (contrastive
regularization, profile alignment, generalization loss, view alignment) to its own ranking loss.

Shared with the SASRec trainer: the seeding, the length-pooled random batches with their
padding trimmed, Adam, early stopping on the valid NDCG@10 with the best state kept and
written to the checkpoint. Each history entry also holds the mean of every loss component.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.gru4rec import GRU4Rec
from agent.models.sasrec import SASRec, left_pad
from agent.models.training import LengthPoolBatchSampler, seed_everything

if TYPE_CHECKING:
    from agent.models.method_base import MethodRecommender

log = logging.getLogger(__name__)

# step(inputs, targets, row ids) -> {"loss": the total to minimise, other components...}
StepFn = Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]


@dataclass
class TrainRows:
    """Next-item training rows: ``inputs``/``targets`` (rows, max_len) left-padded, shifted
    by one as in SASRec; ``user[r]`` indexes the train user (``users``) row r comes from."""

    inputs: np.ndarray
    targets: np.ndarray
    user: np.ndarray
    users: list[str]

    def __len__(self) -> int:
        return len(self.inputs)


def train_rows(
    data: Dataset,
    max_len: int,
    *,
    domains: Sequence[str] | None = None,
    per_domain: bool = False,
) -> TrainRows:
    """Rows from the train users' histories (valid/test rows never train).

    ``domains``: keep only items of these domains in each history (zero-shot training on a
    source domain); ``per_domain``: add, after each mixed row, one row per domain of the
    user's items of that domain alone (SemaCDR's single-domain sequences).
    """
    catalog = data.catalog
    keep = (
        None
        if not domains
        else np.isin(catalog.domain_of, [catalog.domains.index(d) for d in domains])
    )
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    owner: list[int] = []
    users: list[str] = []
    for user in data.iter_split("train"):
        ids = catalog.encode(user.history)
        if keep is not None:
            ids = [i for i in ids if keep[i]]
        seqs = [ids]
        if per_domain:
            doms = catalog.domain_of[ids] if ids else np.zeros(0, dtype=np.int64)
            present = np.unique(doms)
            if len(present) > 1:  # a one-domain user's domain row would repeat the mixed row
                seqs += [[i for i, d in zip(ids, doms, strict=True) if d == p] for p in present]
        added = False
        for seq in seqs:
            tail = seq[-(max_len + 1) :]
            if len(tail) < 2:
                continue
            inputs.append(tail[:-1])
            targets.append(tail[1:])
            owner.append(len(users))
            added = True
        if added:
            users.append(user.user_id)
    return TrainRows(
        left_pad(inputs, max_len),
        left_pad(targets, max_len),
        np.asarray(owner, dtype=np.int64),
        users,
    )


def next_item_logits(
    backbone: SASRec | GRU4Rec,
    inputs: Tensor,
    targets: Tensor,
    negatives: Tensor,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(positive logits (P,), negative logits (P, K), hidden states (B, N, H)) at the P real
    positions, as the SASRec trainer's ``sequence_loss`` computes them: one encoder call for
    inputs, targets and negatives. ``transform`` maps the (P, H) states before scoring."""
    real = targets > 0
    pos_ids, neg_ids = targets[real], negatives[real]
    vectors = backbone.items(torch.cat([inputs.flatten(), pos_ids, neg_ids.flatten()]))
    n_in, n_pos = inputs.numel(), pos_ids.numel()
    hidden = backbone(inputs, vectors[:n_in].view(*inputs.shape, -1))
    h = hidden[real]
    if transform is not None:
        h = transform(h)
    pos = (h * vectors[n_in : n_in + n_pos]).sum(-1)
    neg = (vectors[n_in + n_pos :].view(*neg_ids.shape, -1) @ h.unsqueeze(-1))[..., 0]
    return pos, neg, hidden


def fit_loop(
    rec: MethodRecommender,
    net: nn.Module,
    rows: TrainRows,
    step: StepFn,
    *,
    params: Iterable[nn.Parameter],
    epochs: int,
    valid_fn: ValidFn | None = None,
    out: Path | None = None,
    eval_start: bool = False,
    label: str = "",
) -> FitReport:
    """Train ``params`` of ``net`` on ``rows`` with ``step``'s loss; early stopping as the
    SASRec trainer. ``eval_start``: score the untrained state first, so that training that
    never beats it keeps it (used for LLM-RecG's fusion phase)."""
    settings = rec.settings
    cfg = settings.train
    seed_everything(settings.seed)
    torch.set_flush_denormal(True)  # see training.py: slow denormal Adam moments on CPU
    if len(rows) == 0:
        raise ValueError("no train row has two known items: nothing to train on")
    dataset = TensorDataset(
        torch.from_numpy(rows.inputs),
        torch.from_numpy(rows.targets),
        torch.arange(len(rows)),
    )
    order = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        dataset,
        sampler=LengthPoolBatchSampler((rows.inputs > 0).sum(1), cfg.batch_size, order),
        batch_size=None,
    )
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    name = f"{rec.name}{' ' + label if label else ''}"
    log.info(
        "%s: %d training rows, %d trainable parameters, %d batches of %d per epoch",
        name,
        len(rows),
        sum(p.numel() for p in trainable),
        len(loader),
        cfg.batch_size,
    )
    report = FitReport(checkpoint=out)
    best, best_state, stale = -math.inf, None, 0

    def validate(entry: dict[str, float], epoch: int) -> bool:
        nonlocal best, best_state, stale
        assert valid_fn is not None
        t1 = time.perf_counter()
        net.eval()
        score = float(valid_fn(rec))
        entry["valid_ndcg10"], entry["valid_seconds"] = score, time.perf_counter() - t1
        if score > best:
            best, report.best_epoch, report.best_valid_ndcg10 = score, epoch, score
            best_state, stale = copy.deepcopy(net.state_dict()), 0
            if out is not None:
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
            first = int(torch.nonzero((x > 0).any(dim=0))[0])  # drop all-padding columns
            x, y = x[:, first:].to(rec.device), y[:, first:].to(rec.device)
            parts = step(x, y, r)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(parts["loss"])
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
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        report.best_epoch = report.epochs
        if out is not None:
            rec.save(out)
    net.eval()
    report.seconds = time.perf_counter() - start
    report.seconds_per_epoch = train_seconds / max(report.epochs, 1)
    return report
