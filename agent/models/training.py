"""The trainer shared by the SASRec variants.

Training (as in SASRec): every train row's history, cut to its last ``max_len + 1`` items, gives
``max_len`` next-item examples at once: input ids[:-1], target ids[1:], left-padded. Each
position's loss is binary cross-entropy on the target's logit and on ``num_negatives`` sampled
negatives' logits; padded positions carry no loss. Adam; the best state by ``valid_fn`` is kept
and written to the checkpoint; training stops after ``patience`` evaluations without a gain.
Only train rows train (the histories of valid/test rows are left out too).

Early stopping calls a ``ValidFn``; callers pass the evaluation harness' ``make_valid_fn``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from agent.data.schema import Dataset
from agent.models.base import FitReport, ValidFn
from agent.models.sasrec import SASRec, SASRecRecommender, left_pad

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class DomainNegativeSampler:
    """Uniform negatives from the positive target's own domain.

    The data mixes domains and evaluation ranks the target among items of its own domain. A
    negative drawn from the whole catalog is, for a food target, 3 times in 4 a kitchen item,
    which the model separates by domain alone: an easy negative that teaches nothing about
    ranking within a domain. Same-domain negatives match the ranking task.
    """

    def __init__(self, domain_of: np.ndarray, device: torch.device | str = "cpu") -> None:
        domains = np.asarray(domain_of, dtype=np.int64)  # domain_of[0] = -1 (padding)
        n_domains = int(domains.max()) + 1
        ids = np.arange(1, len(domains))
        order = ids[np.argsort(domains[1:], kind="stable")]  # item ids grouped by domain
        sizes = np.bincount(domains[1:], minlength=n_domains)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
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


def sequence_loss(net: SASRec, inputs: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """Mean over real positions of BCE(target logit, 1) + sum_k BCE(negative_k logit, 0)."""
    real = targets > 0
    pos_ids, neg_ids = targets[real], negatives[real]  # (P,), (P, K): positions with a target
    # one encoder call for inputs, targets and negatives: a text adapter then runs once per
    # distinct item of the batch
    vectors = net.items(torch.cat([inputs.flatten(), pos_ids, neg_ids.flatten()]))
    n_in, n_pos = inputs.numel(), pos_ids.numel()
    hidden = net(inputs, vectors[:n_in].view(*inputs.shape, -1))
    h = hidden[real]  # (P, H)
    pos = vectors[n_in : n_in + n_pos]  # (P, H)
    neg = vectors[n_in + n_pos :].view(*neg_ids.shape, -1)  # (P, K, H)
    pos_logit = (h * pos).sum(-1)
    neg_logit = (neg @ h.unsqueeze(-1)).squeeze(-1)
    # softplus(-x) = -log sigmoid(x) (label 1); softplus(x) = -log(1 - sigmoid(x)) (label 0)
    return F.softplus(-pos_logit).mean() + F.softplus(neg_logit).sum(-1).mean()


def fit_sequence_model(
    rec: SASRecRecommender,
    *,
    valid_fn: ValidFn | None = None,
    out: Path | None = None,
) -> FitReport:
    settings = rec.settings
    cfg = settings.train  # (train.threads is applied when the recommender is built)
    seed_everything(settings.seed)
    # Adam's moments of item rows that get no gradient decay geometrically into denormal
    # floats after ~800 steps, and CPU arithmetic on denormals is slow: without this, epoch
    # times grew 12 s -> 22 s -> 34 s on food-kitchen.
    torch.set_flush_denormal(True)
    net = rec.network
    device = rec.device

    inputs, targets = training_sequences(rec.data, net.max_len)
    if len(inputs) == 0:
        raise ValueError("no train row has two known items: nothing to train on")
    dataset = TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))
    order = torch.Generator().manual_seed(settings.seed)
    # whole batches are indexed at once (tensor[list]) instead of collating single rows
    loader = DataLoader(
        dataset,
        sampler=LengthPoolBatchSampler((inputs > 0).sum(1), cfg.batch_size, order),
        batch_size=None,
    )
    sampler = DomainNegativeSampler(rec.data.catalog.domain_of, device)
    neg_gen = torch.Generator(device=device).manual_seed(settings.seed + 1)
    params = [p for p in net.parameters() if p.requires_grad]
    # fused: one kernel for the whole update; the dense item table makes the step a large
    # share of each batch's time on CPU
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    n_params = sum(p.numel() for p in params)
    log.info(
        "%s: %d training sequences, %d trainable parameters, %d batches of %d per epoch",
        rec.name,
        len(inputs),
        n_params,
        len(loader),
        cfg.batch_size,
    )

    report = FitReport(checkpoint=out)
    best_state: dict[str, Tensor] | None = None
    best = -math.inf
    evals_without_gain = 0
    train_seconds = 0.0
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        t0 = time.perf_counter()
        total, steps = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None)
        for x, y in bar:
            # inputs and targets are padded at the same columns; drop all-padding columns
            first = int(torch.nonzero((x > 0).any(dim=0))[0])
            x, y = x[:, first:].to(device), y[:, first:].to(device)
            negatives = sampler.sample(y, cfg.num_negatives, neg_gen)
            loss = sequence_loss(net, x, y, negatives)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{total / steps:.4f}")
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        entry = {"epoch": float(epoch), "loss": total / max(steps, 1), "seconds": epoch_seconds}
        report.epochs = epoch

        if valid_fn is None or epoch % cfg.eval_every:
            log.info("epoch %d: loss %.4f (%.1fs)", epoch, entry["loss"], epoch_seconds)
            report.history.append(entry)
            continue
        t1 = time.perf_counter()
        net.eval()
        score = float(valid_fn(rec))
        entry["valid_ndcg10"] = score
        entry["valid_seconds"] = time.perf_counter() - t1
        report.history.append(entry)
        improved = score > best
        if improved:
            best, report.best_epoch, report.best_valid_ndcg10 = score, epoch, score
            best_state = copy.deepcopy(net.state_dict())
            evals_without_gain = 0
            if out is not None:
                rec.save(out)  # write at once: an interrupted run keeps its best model
        else:
            evals_without_gain += 1
        log.info(
            "epoch %d: loss %.4f (%.1fs), valid NDCG@10 %.4f%s (best %.4f at epoch %d)",
            epoch,
            entry["loss"],
            epoch_seconds,
            score,
            " *" if improved else "",
            best,
            report.best_epoch,
        )
        if evals_without_gain >= cfg.patience:
            log.info("early stop: %d evaluations without a gain", evals_without_gain)
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
