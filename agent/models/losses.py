"""The methods' auxiliary losses, as pure functions on tensors (references: ../shared/METHODS.md).

- ``contrastive_regularization``: LLM4CDSR's contrastive regularization (METHODS.md, LLM4CDSR,
  "Contrastive regularization"), also its profile alignment, and SemaCDR's view alignment
  (``view_alignment``).
- ``intra_domain_diversity``, ``inter_domain_compactness``, ``generalization_loss``: LLM-RecG's
  generalization loss (METHODS.md, LLM-RecG, "Generalization loss").
- ``bpr_loss``: the ranking loss LLM-RecG trains its backbones with (BPR, 5 negatives).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_regularization(x: Tensor, y: Tensor, tau: float = 1.0) -> Tensor:
    """Symmetric InfoNCE with soft targets between paired rows of ``x`` and ``y`` (n, d).

    As LLM4CDSR defines it (tau = 1 in the paper)::

        logits  = x y^T / tau
        targets = softmax(((x x^T + y y^T) / 2) * tau)        (row-wise)
        loss    = mean_i [ CE(logits_i, targets_i) + CE(logits^T_i, targets^T_i) ] / 2

    with CE(l, t) = -sum_j t_j log softmax(l)_j. Row i of ``x`` and row i of ``y`` are a pair
    (an A item and a B item of one user; a profile and a sequence). The soft targets let two
    rows that are alike within their own side count as partial positives. No normalisation:
    the vectors enter as they are, as in the paper. A batch of one row gives 0.
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"expected two (n, d) tensors of one shape, got {x.shape}, {y.shape}")
    logits = x @ y.T / tau
    targets = torch.softmax((x @ x.T + y @ y.T) / 2 * tau, dim=-1)
    x_side = -(targets * F.log_softmax(logits, dim=-1)).sum(-1)
    y_side = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(-1)
    return ((x_side + y_side) / 2).mean()


def view_alignment(anchor: Tensor, views: Sequence[Tensor], tau: float = 1.0) -> Tensor:
    """SemaCDR's alignment of item views: the mean of ``contrastive_regularization(anchor,
    view)`` over the views (rows are items; row i of every tensor is the same item)."""
    if not views:
        return anchor.new_zeros(())
    return torch.stack([contrastive_regularization(anchor, v, tau) for v in views]).mean()


def _entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the entries where ``mask`` is True, per row.

    H = logsumexp(l) - sum_j p_j l_j, which stays finite (and differentiable) where masked
    entries have p_j = 0; rows with no unmasked entry are not allowed.
    """
    masked = logits.masked_fill(~mask, float("-inf"))
    p = torch.softmax(masked, dim=-1)
    return torch.logsumexp(masked, dim=-1) - (p * logits.masked_fill(~mask, 0.0)).sum(-1)


def intra_domain_diversity(emb: Tensor, domains: Tensor, tau: float = 0.1) -> Tensor:
    """L_intra: sum over items i of H(P_i), P_ij = softmax_j(cos(e_i, e_j) / tau) over the
    OTHER items j of i's domain. To be kept high (it enters L_gen with a minus sign).

    The item itself is left out of j: its own cosine is always the largest (1), and with it
    in, the entropy is highest when every item coincides with every other, so maximising it
    would collapse the domain, the opposite of diversity. Without it, H(P_i) is highest when
    i is equally similar to all its domain's other items: the gradient pushes i away from its
    nearest neighbours. Items alone in their domain contribute nothing.
    """
    e = F.normalize(emb, dim=-1)
    logits = e @ e.T / tau
    same = domains.unsqueeze(0) == domains.unsqueeze(1)
    others = same & ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    has = others.any(-1)
    if not bool(has.any()):
        return emb.new_zeros(())
    return _entropy(logits[has], others[has]).sum()


def domain_centers(emb: Tensor, domains: Tensor) -> tuple[Tensor, Tensor]:
    """(present domain labels (D,), their mean embeddings (D, d))."""
    labels, where = torch.unique(domains, return_inverse=True)
    sums = emb.new_zeros(len(labels), emb.shape[1]).index_add_(0, where, emb)
    counts = torch.bincount(where, minlength=len(labels)).to(emb.dtype).unsqueeze(-1)
    return labels, sums / counts


def inter_domain_compactness(emb: Tensor, domains: Tensor, tau: float = 0.1) -> Tensor:
    """L_inter: sum over items i of H(Q_i), Q_id = softmax_d(cos(e_i, c_d) / tau) over the
    centers c_d (mean embeddings) of the domains OTHER than i's. To be minimised.

    With two domains each Q_i has a single entry, so L_inter is identically 0 (no gradient):
    the term only acts with three or more domains in the batch.
    """
    labels, centers = domain_centers(emb, domains)
    if len(labels) < 3:
        return emb.new_zeros(()) + 0.0 * emb.sum()  # keeps the graph; value and grad are 0
    cos = F.normalize(emb, dim=-1) @ F.normalize(centers, dim=-1).T / tau  # (n, D)
    other = domains.unsqueeze(-1) != labels.unsqueeze(0)
    return _entropy(cos, other).sum()


def generalization_beta(alpha: float, n_per_domain: int, n_domains: int) -> float:
    """beta = alpha * |N| / |D|^3 (METHODS.md). METHODS.md does not define N and D; we read
    N as the items sampled per domain for the loss and D as the number of domains sampled."""
    return alpha * n_per_domain / max(n_domains, 1) ** 3


def generalization_loss(
    emb: Tensor,
    domains: Tensor,
    *,
    alpha: float,
    beta: float | None = None,
    tau: float = 0.1,
    intra: bool = True,
    inter: bool = True,
) -> Tensor:
    """L_gen = -alpha * L_intra + beta * L_inter (LLM-RecG; the paper's prose and code sign).

    ``emb`` (n, d) are item embeddings sampled from all domains, ``domains`` (n,) their domain
    labels. ``beta`` defaults to ``generalization_beta(alpha, n / D, D)``. Both entropies are
    sums over the sampled items: the paper's alpha grid (0.05 .. 0.0001, best 0.001) only gives
    the term any weight beside a mean ranking loss if they are sums, not means.
    """
    if beta is None:
        n_domains = len(torch.unique(domains))
        beta = generalization_beta(alpha, len(emb) // max(n_domains, 1), n_domains)
    loss = emb.new_zeros(())
    if intra:
        loss = loss - alpha * intra_domain_diversity(emb, domains, tau)
    if inter:
        loss = loss + beta * inter_domain_compactness(emb, domains, tau)
    return loss


def bpr_loss(pos_logit: Tensor, neg_logit: Tensor) -> Tensor:
    """BPR: mean over positions and negatives of -log sigmoid(pos - neg); ``pos_logit`` (P,),
    ``neg_logit`` (P, K)."""
    return F.softplus(neg_logit - pos_logit.unsqueeze(-1)).mean()
