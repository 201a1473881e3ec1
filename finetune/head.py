"""Training the correction head (``recbridge ranker head``; the model: agent/rerank/head.py).

The same groups as the learned ranker (``finetune.ranker.ranker_data``: train rows through the
holdout retriever, valid users through the trained one), the items' cached LLM states, Adam on
the offset softmax loss, early stopping on valid NDCG@10 over every valid user. Seconds per
epoch once the states are cached, so it trains on every kept train group.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.config import Settings
from agent.data.schema import Dataset
from agent.items.llm_states import load_item_states
from agent.llm.threads import torch_threads
from agent.rerank.features import BASE_FEATURES
from agent.rerank.head import (
    CorrectionHead,
    HeadBatch,
    HeadCard,
    fit_tau,
    offset_logits,
    offset_loss,
    save_head,
)
from agent.rerank.ranker import RankerGroups
from finetune.ranker import ndcg10, peak_rss_mb, ranker_data

log = logging.getLogger(__name__)

SCORE = BASE_FEATURES.index("retr_score")


def _full_lists(groups: RankerGroups, n: int) -> np.ndarray:
    """Indices of the groups with exactly ``n`` candidates (all of them on food-kitchen)."""
    return np.flatnonzero(groups.sizes == n)


def _select(groups: RankerGroups, keep: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    rows = (groups.offsets[keep][:, None] + np.arange(n)[None, :]).reshape(-1)
    return (
        groups.features[rows],
        groups.labels[rows].reshape(len(keep), n),
        groups.items[rows],
        rows,
    )


def head_batch(
    groups: RankerGroups,
    keep: np.ndarray,
    n: int,
    states: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> tuple[HeadBatch, torch.Tensor]:
    feats, labels, items, _ = _select(groups, keep, n)
    batch = HeadBatch(
        feats[:, SCORE].reshape(len(keep), n).astype(np.float64),
        feats,
        items,
        [groups.histories[int(g)] for g in keep],
        states,
        mean,
        std,
    )
    return batch, torch.from_numpy(labels.astype(np.float32))


def _valid_ndcg(
    head: CorrectionHead,
    valid: RankerGroups,
    users: int,
    n: int,
    tau: float,
    states: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> float:
    keep = _full_lists(valid, n)
    batch, _ = head_batch(valid, keep, n, states, mean, std)
    with torch.inference_mode():
        logits = offset_logits(batch.scores, tau, batch.corrections(head)).numpy()
    scores = np.full(len(valid.labels), -np.inf)
    _, _, _, rows = _select(valid, keep, n)
    scores[rows] = logits.reshape(-1)
    return ndcg10(valid, scores, users)


def train_head(
    settings: Settings,
    data: Dataset,
    out: Path | None = None,
    *,
    epochs: int = 30,
    patience: int = 4,
    batch_groups: int = 256,
    lr: float = 1e-3,
) -> Path:
    cfg = settings.ranker
    if not cfg.llm_states:
        raise ValueError("the correction head reads LLM item states: set ranker.llm_states")
    out = out or settings.work_dir / "heads" / cfg.llm_states
    started = time.perf_counter()
    groups = ranker_data(settings, data)
    states = load_item_states(data, settings, cfg.llm_states)
    n = settings.ranker.top_n
    train_keep = _full_lists(groups.train, n)
    feats, labels, _, _ = _select(groups.train, train_keep, n)
    mean = feats.mean(axis=0).astype(np.float32)
    std = np.maximum(feats.std(axis=0), 1e-6).astype(np.float32)
    tau = fit_tau(feats[:, SCORE].reshape(len(train_keep), n), labels)
    log.info("head: %d train lists of %d, retriever tau %.3f", len(train_keep), n, tau)
    torch.manual_seed(settings.seed)
    head = CorrectionHead(states.shape[1], feats.shape[1])
    args = (groups.valid, groups.valid_users, n, tau, states, mean, std)
    best = _valid_ndcg(head, *args)
    curve: list[dict[str, float]] = [{"epoch": 0, "valid_ndcg10": best}]
    log.info("head epoch 0 (the retriever's order): valid NDCG@10 %.4f", best)
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    best_epoch, stale = 0, 0
    optim = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(settings.seed)
    epoch_seconds: list[float] = []
    with torch_threads(settings.train.threads):
        for epoch in range(1, epochs + 1):
            tick = time.perf_counter()
            head.train()
            order = rng.permutation(train_keep)
            total = 0.0
            for lo in range(0, len(order), batch_groups):
                batch, y = head_batch(
                    groups.train, order[lo : lo + batch_groups], n, states, mean, std
                )
                loss = offset_loss(batch.scores, tau, batch.corrections(head), y)
                optim.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optim.step()
                total += float(loss.detach()) * len(y)
            head.eval()
            score = _valid_ndcg(head, *args)
            epoch_seconds.append(time.perf_counter() - tick)
            curve.append({"epoch": epoch, "loss": total / len(order), "valid_ndcg10": score})
            log.info(
                "head epoch %d: loss %.4f, valid NDCG@10 %.4f (%.1fs)",
                epoch,
                total / len(order),
                score,
                epoch_seconds[-1],
            )
            if score > best:
                best, best_epoch, stale = score, epoch, 0
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    break
    head.load_state_dict(best_state)
    info: dict[str, Any] = {
        **groups.info,
        "lists": len(train_keep),
        "epochs": len(curve) - 1,
        "best_epoch": best_epoch,
        "seconds_per_epoch": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "seed": settings.seed,
    }
    card = HeadCard(
        features=groups.names,
        llm_states=cfg.llm_states,
        tau=tau,
        mean=mean.tolist(),
        std=std.tolist(),
        config=head.config,
        top_n=n,
        retriever=cfg.retriever,
        valid={"users": groups.valid_users, "best_ndcg10": best, "curve": curve},
        train=info,
        extra_retrievers=list(cfg.extra_retrievers),
    )
    save_head(out, head, card)
    log.info("head -> %s: valid NDCG@10 %.4f at epoch %d", out, best, best_epoch)
    return out
