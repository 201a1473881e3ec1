"""Losses on the answer only.

- ``verbalizer_loss``: cross-entropy of the target's label token over the whole vocabulary at
  the first answer position (LlamaRec), plus optionally FIRST's pairwise term: RankNet over the
  candidates' label logits, the target against every other candidate,
  ``mean_j log(1 + exp(-(z_target - z_j)))``, weighted by ``pairwise_weight``.
- ``answer_lm_loss``: token cross-entropy over the answer tokens (the listwise permutation),
  prompt and padding positions ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100  # label value the LM loss skips


def pairwise_label_loss(label_logits: Tensor, target: Tensor) -> Tensor:
    """RankNet over label logits ``[B, L]``: the target label above each other label."""
    batch, n = label_logits.shape
    positive = label_logits.gather(1, target[:, None])  # [B, 1]
    margins = positive - label_logits  # [B, L]; 0 at the target itself
    others = torch.ones_like(label_logits, dtype=torch.bool)
    others[torch.arange(batch), target] = False
    losses = F.softplus(-margins)[others].view(batch, n - 1)
    return losses.mean()


def verbalizer_loss(
    logits: Tensor, label_ids: Tensor, target: Tensor, pairwise_weight: float = 0.0
) -> Tensor:
    """``logits`` ``[B, V]`` at the answer position; ``label_ids`` ``[B, L]`` token ids of the
    candidates' labels; ``target`` ``[B]`` index of the right label among them."""
    target_tokens = label_ids.gather(1, target[:, None]).squeeze(1)
    loss = F.cross_entropy(logits.float(), target_tokens)
    if pairwise_weight > 0:
        loss = loss + pairwise_weight * pairwise_label_loss(
            logits.float().gather(1, label_ids), target
        )
    return loss


def answer_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``logits`` ``[B, T, V]`` predicting ``labels`` ``[B, T]`` (already shifted: position t
    predicts labels[t]); IGNORE positions do not count."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
    )
