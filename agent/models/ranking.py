"""The ranking losses of the sequential models (``train.loss``), as pure functions on tensors
and as ``RankingLoss``, which samples what each loss needs and computes it.

At every real position p the model has a user vector h_p, the target (positive) item and a
score s_i = <h_p, v_i> for any item i. The candidates of a position are items of the target's
own domain (evaluation ranks the target among its domain's items). Each loss is a mean over
positions:

- ``bce`` (SASRec, Kang & McAuley 2018): -log sigmoid(s_pos) - sum_k log(1 - sigmoid(s_k)),
  k over ``num_negatives`` uniform same-domain negatives (1 by default, as in SASRec).
- ``bpr`` (LLM-RecG's backbones): mean_k -log sigmoid(s_pos - s_k).
- ``ce`` (Klenitskiy & Vasilev, RecSys 2023; RecBole's default): cross-entropy of a softmax
  over ALL items of the target's domain. The logits are computed in chunks of items inside a
  custom autograd function that recomputes them in the backward pass, so memory stays at
  positions x ``chunk`` floats whatever the catalogue's size.
- ``sampled-softmax``: the same softmax with the domain's sum estimated from ``num_negatives``
  negatives drawn from Q (popularity within the domain, ``PopularityNegativeSampler``):
      sum_{i != pos} exp(s_i) ~= (1/K) sum_k exp(s_k) / Q(k) = sum_k exp(s_k - log(K Q(k))),
  so each negative's logit is corrected by -log(K Q(k)) (the logQ correction), the
  positive's is not, and draws equal to the positive ("accidental hits") are masked out.
- ``gbce`` (gSASRec, Petrov & Macdonald, RecSys 2023): BCE whose positive term is raised to
  the power beta, -log(sigmoid(s_pos)^beta) = -beta log sigmoid(s_pos), with
      alpha = K / (|domain| - 1)  (the sampling rate of negatives),
      beta = alpha * (t * (1 - 1/alpha) + 1/alpha);
  t = 0 gives beta = 1 (plain BCE), t = 1 gives beta = alpha (fully calibrated scores).
  Checked against the authors' gSASRec-pytorch (``gbce.py``: beta * softplus(-s_pos) +
  softplus(s_neg)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from agent.models.losses import bpr_loss
from agent.models.method_settings import RankingLossName
from agent.models.sampling import DomainNegativeSampler, PopularityNegativeSampler

# Negatives per position when num_negatives is not set: SASRec's 1 for bce, LLM-RecG's 5 for
# bpr, gSASRec's 256 for gbce; 1024 for sampled-softmax (Klenitskiy & Vasilev: the more
# negatives, the closer to ce; shared by the batch, 1024 cost little more than 256 here).
DEFAULT_NEGATIVES: dict[str, int] = {
    "bce": 1,
    "bpr": 5,
    "sampled-softmax": 1024,
    "gbce": 256,
    "ce": 0,
}
# Items per chunk of ``ce``'s logits: positions x chunk near 2^19 floats (2 MiB), which stays
# in cache through the matmul, max, exp and sum. One 72 MiB block of logits per domain ran
# 1.7x slower (food-kitchen, 650 positions x 27.6k kitchen items, one thread: a matmul that
# writes to fresh memory runs at a third of its in-cache speed).
CE_CHUNK_ELEMENTS = 1 << 19
# Bound on the exp(logits) kept from the forward for the backward (256 MiB; beyond it the
# backward recomputes them chunk by chunk).
CE_KEEP_ELEMENTS = 1 << 26


def bce_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Mean over positions of BCE(positive logit, 1) + sum_k BCE(negative_k logit, 0)."""
    # softplus(-x) = -log sigmoid(x) (label 1); softplus(x) = -log(1 - sigmoid(x)) (label 0)
    return F.softplus(-pos).mean() + F.softplus(neg).sum(-1).mean()


def gbce_beta(num_negatives: int, pool_size: int | Tensor, t: float) -> Tensor:
    """gSASRec's beta for ``num_negatives`` negatives drawn from ``pool_size`` items (the
    domain's, the positive included): alpha = K / (pool - 1), beta = alpha (t (1 - 1/alpha)
    + 1/alpha)."""
    pool = torch.as_tensor(pool_size, dtype=torch.float64)
    alpha = num_negatives / (pool - 1).clamp(min=1)
    return (alpha * (t * (1 - 1 / alpha) + 1 / alpha)).float()


def gbce_loss(pos: Tensor, neg: Tensor, beta: Tensor | float) -> Tensor:
    """Mean over positions of -log(sigmoid(pos)^beta) + sum_k -log(1 - sigmoid(neg_k));
    ``beta`` a number or one per position."""
    return (beta * F.softplus(-pos)).mean() + F.softplus(neg).sum(-1).mean()


def sampled_softmax_loss(
    pos: Tensor, neg: Tensor, neg_log_q: Tensor, num_negatives: int, hits: Tensor | None = None
) -> Tensor:
    """Mean over positions of -log softmax([pos, neg_k - log(K Q_k)])[0]; ``hits`` (P, K) marks
    negatives equal to the positive, left out. ``neg_log_q`` (P, K) = log Q of each draw."""
    corrected = neg - neg_log_q - float(np.log(num_negatives))
    if hits is not None:
        corrected = corrected.masked_fill(hits, float("-inf"))
    logits = torch.cat([pos.unsqueeze(-1), corrected], dim=-1)
    return (torch.logsumexp(logits, dim=-1) - pos).mean()


class _ChunkedLogSumExp(torch.autograd.Function):
    """logsumexp_j <users_p, items_j> over item chunks, in place to spare allocations.

    The forward keeps each chunk's exp(logits - chunk max) when all of them fit in
    ``keep_elements``: the backward then rescales them into the softmax (no second matmul,
    no second exp). Otherwise it keeps nothing and the backward recomputes chunk by chunk.
    """

    @staticmethod
    def forward(
        ctx: Any,
        users: Tensor,
        items: Tensor,
        chunk: int,
        keep_elements: int,
        matmul_dtype: torch.dtype | None,
    ) -> Tensor:
        keep = users.shape[0] * items.shape[0] <= keep_elements
        dtype = users.dtype
        if matmul_dtype is not None:  # the matmuls' inputs rounded, everything else in dtype
            users, items = users.to(matmul_dtype), items.to(matmul_dtype)
        shifts: list[Tensor] = []
        sums: list[Tensor] = []
        kept: list[Tensor] = []
        for start in range(0, items.shape[0], chunk):
            logits = (users @ items[start : start + chunk].T).to(dtype)
            shift = logits.amax(dim=-1)
            part = logits.sub_(shift.unsqueeze(-1)).exp_()  # in (0, 1]
            shifts.append(shift)
            sums.append(part.sum(-1))
            if keep:
                kept.append(part)
        # lse = m + log sum_c sums_c exp(shift_c - m), m the largest shift: one pass at the end
        shift_all, sum_all = torch.stack(shifts, 1), torch.stack(sums, 1)  # (P, chunks)
        top = shift_all.amax(dim=1)
        lse = top + (sum_all * (shift_all - top.unsqueeze(-1)).exp_()).sum(1).log_()
        ctx.save_for_backward(users, items, lse, shift_all, *kept)
        ctx.chunk = chunk
        return lse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        users, items, lse, shift_all, *kept = ctx.saved_tensors
        dtype = lse.dtype
        low = users.dtype != dtype  # matmuls in a lower precision (``matmul_dtype``)
        grad_users = torch.zeros(users.shape, dtype=dtype, device=users.device)
        grad_items = torch.empty(items.shape, dtype=dtype, device=items.device)
        # softmax = exp(logits - shift_c) * exp(shift_c - lse); times the incoming grad
        scales = torch.exp(shift_all - lse.unsqueeze(-1)).mul_(grad.unsqueeze(-1))
        weight: Tensor | None = None  # one buffer for every chunk (``kept`` stays intact:
        # backward may run twice with retain_graph)
        for n, start in enumerate(range(0, items.shape[0], ctx.chunk)):
            part = items[start : start + ctx.chunk]
            if kept:
                if weight is None or weight.shape != kept[n].shape:
                    weight = torch.empty_like(kept[n])
                torch.mul(kept[n], scales[:, n : n + 1], out=weight)
            else:
                weight = (users @ part.T).to(dtype).sub_(lse.unsqueeze(-1)).exp_()
                weight.mul_(grad.unsqueeze(-1))
            if low:
                w = weight.to(users.dtype)
                grad_users.add_(w @ part)
                grad_items[start : start + ctx.chunk] = w.T @ users
            else:
                grad_users.addmm_(weight, part)
                torch.mm(weight.T, users, out=grad_items[start : start + ctx.chunk])
        return grad_users, grad_items, None, None, None


class _MaskedLogSumExp(torch.autograd.Function):
    """logsumexp_k (<users_p, items_k> + bias_k) over the k not ``blocked`` for p, in one
    (P, K) buffer: the matmul adds the bias, the mask and the exp run in place, and the
    backward rescales the kept exps into the softmax (no cat, no gather, no second exp).
    A row with every k blocked gives -inf and no gradient."""

    @staticmethod
    def forward(
        ctx: Any, users: Tensor, items: Tensor, bias: Tensor, blocked: Tensor | None
    ) -> Tensor:
        logits = torch.addmm(bias, users, items.T)
        if blocked is not None:
            logits.masked_fill_(blocked, float("-inf"))
        shift = logits.amax(dim=-1)
        shift = shift.masked_fill(torch.isinf(shift), 0.0)  # rows with every k blocked
        part = logits.sub_(shift.unsqueeze(-1)).exp_()  # blocked: exp(-inf) = 0
        lse = part.sum(-1).log_().add_(shift)
        ctx.save_for_backward(users, items, part, shift, lse)
        return lse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        users, items, part, shift, lse = ctx.saved_tensors
        scale = torch.exp(shift - lse).mul_(grad)
        scale = scale.masked_fill(torch.isinf(lse), 0.0)
        weight = part * scale.unsqueeze(-1)  # the softmax times grad; part kept intact
        grad_users = weight @ items if ctx.needs_input_grad[0] else None
        grad_items = weight.T @ users if ctx.needs_input_grad[1] else None
        return grad_users, grad_items, None, None


def masked_logsumexp(
    users: Tensor, items: Tensor, bias: Tensor, blocked: Tensor | None = None
) -> Tensor:
    """(P,) logsumexp over the rows k of ``items`` (K, U) of <users_p, item_k> + bias_k,
    leaving out the k where ``blocked`` (P, K) is True; ``bias`` (K,) takes no gradient."""
    out: Tensor = _MaskedLogSumExp.apply(users, items, bias.detach(), blocked)  # type: ignore[no-untyped-call]
    return out


def chunked_logsumexp(
    users: Tensor,
    items: Tensor,
    chunk: int | None = None,
    keep_elements: int | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> Tensor:
    """(P,) logsumexp over the rows of ``items`` (n, U) of <users_p, item>; memory: P x chunk
    floats, or the whole P x n when that is at most ``keep_elements`` (faster backward).

    ``matmul_dtype`` (``torch.bfloat16``): the three matmuls take their inputs rounded to it
    (the logits come out rounded too); max, exp, sums and gradients stay in the inputs' dtype.
    """
    if chunk is None:
        chunk = max(256, CE_CHUNK_ELEMENTS // max(users.shape[0], 1))
    keep = CE_KEEP_ELEMENTS if keep_elements is None else keep_elements
    if matmul_dtype == users.dtype:
        matmul_dtype = None
    out: Tensor = _ChunkedLogSumExp.apply(users, items, chunk, keep, matmul_dtype)  # type: ignore[no-untyped-call]
    return out


def bf16_matmul_pays(device: torch.device | str) -> bool:
    """Whether bfloat16 matmuls are native here: on CPU only with avx512_bf16 (or AMX), else
    they are emulated and slower than float32; on CUDA always."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check()) if check is not None else False


def full_softmax_loss(
    users: Tensor,
    targets: Tensor,
    table: Tensor,
    domain_items: list[Tensor],
    target_domain: Tensor,
    chunk: int | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> Tensor:
    """Mean over positions of -log softmax over the target's domain of <users_p, table_i>.

    ``users`` (P, U), ``targets`` (P,) dense ids, ``table`` (num_items + 1, U),
    ``domain_items[d]`` the dense ids of domain d, ``target_domain`` (P,) each target's domain;
    ``matmul_dtype``: see ``chunked_logsumexp`` (the positive's logit stays in full precision).
    """
    pos = (users * table[targets]).sum(-1)
    total = users.new_zeros(())
    for d, ids in enumerate(domain_items):
        rows = torch.nonzero(target_domain == d)[:, 0]
        if len(rows) == 0:
            continue
        lse = chunked_logsumexp(users[rows], table[ids], chunk, matmul_dtype=matmul_dtype)
        total = total + lse.sum()
    return (total - pos.sum()) / max(len(targets), 1)


# encode(ids) -> item vectors (n, U) of flat ids; table() -> (num_items + 1, U) of every item
EncodeFn = Callable[[Tensor], Tensor]
TableFn = Callable[[], Tensor]


class RankingLoss:
    """One of the losses above, with its sampler, for one training run.

    ``counts`` (num_items + 1,): each item's count in the train rows (the popularity of
    ``sampled-softmax``).

    ``bce`` and ``bpr`` draw K negatives per position, on the whole padded target grid (B, N),
    read at the real positions, as the BCE trainer always did: a ``bce`` run draws the same
    negatives, in the same order, as before this module existed. ``sampled-softmax`` and
    ``gbce`` draw K negatives per domain per batch, shared by every position whose target is
    of that domain (``shared``): each position still sees K draws from Q, and the logits are
    one (P, U) x (U, K) product instead of a gather of P x K item vectors, which made 256
    per-position negatives 13x slower than BCE per batch and 1,024 slower than the full
    softmax. A shared negative equal to a position's positive is masked out for it.
    """

    def __init__(
        self,
        name: RankingLossName,
        domain_of: np.ndarray,
        *,
        counts: np.ndarray | None = None,
        num_negatives: int | None = None,
        gbce_t: float = 0.75,
        gbce_shared: bool = True,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        ce_matmul_dtype: torch.dtype | None = None,
    ) -> None:
        if name not in DEFAULT_NEGATIVES:
            raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(DEFAULT_NEGATIVES)}")
        self.name = name
        self.device = torch.device(device)
        self.k = DEFAULT_NEGATIVES[name] if num_negatives is None else int(num_negatives)
        if name != "ce" and self.k < 1:
            raise ValueError(f"loss {name} needs num_negatives >= 1, got {self.k}")
        self.generator = generator
        self.gbce_t = gbce_t
        self.gbce_shared = gbce_shared
        self.ce_matmul_dtype = ce_matmul_dtype
        domains = np.asarray(domain_of, dtype=np.int64)
        self.item_domain = torch.from_numpy(np.maximum(domains, 0)).to(self.device)
        self.domain_items = [
            torch.from_numpy(np.flatnonzero(domains == d)).to(self.device)
            for d in range(int(domains.max()) + 1)
        ]
        sizes = torch.tensor([len(ids) for ids in self.domain_items], device=self.device)
        self.beta = gbce_beta(self.k, sizes, gbce_t) if name == "gbce" else None
        self.popularity: PopularityNegativeSampler | None = None
        self.uniform: DomainNegativeSampler | None = None
        if name == "sampled-softmax":
            if counts is None:
                raise ValueError("sampled-softmax needs the items' train counts")
            self.popularity = PopularityNegativeSampler(domains, counts, self.device)
        elif name != "ce":
            self.uniform = DomainNegativeSampler(domains, self.device)

    @property
    def full(self) -> bool:
        """Whether the loss scores the whole domain (``ce``) instead of sampled negatives."""
        return self.name == "ce"

    @property
    def shared(self) -> bool:
        """Whether the batch shares its negatives (per domain) instead of drawing per position."""
        return self.name == "sampled-softmax" or (self.name == "gbce" and self.gbce_shared)

    def shared_negatives(self) -> Tensor:
        """(domains, K) negative ids: K draws from Q (or uniform) within each domain."""
        if self.popularity is not None:
            firsts = torch.stack([ids[0] for ids in self.domain_items])
            return self.popularity.sample(firsts, self.k, self.generator)
        sizes = torch.tensor([len(ids) for ids in self.domain_items], device=self.device)
        u = torch.rand(
            (len(sizes), self.k), generator=self.generator, device=self.device, dtype=torch.float64
        )
        slot = torch.minimum((u * sizes.unsqueeze(-1)).long(), sizes.unsqueeze(-1) - 1)
        return torch.stack([ids[row] for ids, row in zip(self.domain_items, slot, strict=True)])

    def from_shared(
        self,
        users: Tensor,
        pos_ids: Tensor,
        pos_vectors: Tensor,
        negatives: Tensor,
        neg_vectors: Tensor,
    ) -> Tensor:
        """The loss with negatives shared per domain: ``negatives`` (D, K) from
        ``shared_negatives``, ``neg_vectors`` (D * K, U) their vectors, row by row."""
        pos = (users * pos_vectors).sum(-1)
        domain = self.item_domain[pos_ids]
        total = users.new_zeros(())
        k = negatives.shape[1]
        for d in range(negatives.shape[0]):
            rows = torch.nonzero(domain == d)[:, 0]
            if len(rows) == 0:
                continue
            if self.popularity is not None:  # sampled-softmax, fused: sampled_softmax_loss's
                # value with the logQ correction as the matmul's bias and the hits masked in
                # place: no (P, K) gather of log Q, no cat (1.6x faster per batch)
                neg = negatives[d]
                bias = -(self.popularity.log_q[neg].to(users.dtype) + float(np.log(k)))
                hits = neg.unsqueeze(0) == pos_ids[rows].unsqueeze(-1)
                lse = masked_logsumexp(users[rows], neg_vectors[d * k : (d + 1) * k], bias, hits)
                total = total + (torch.logaddexp(lse, pos[rows]) - pos[rows]).sum()
                continue
            ids = negatives[d].unsqueeze(0).expand(len(rows), -1)
            logits = users[rows] @ neg_vectors[d * k : (d + 1) * k].T  # (P_d, K)
            hits = ids == pos_ids[rows].unsqueeze(-1)
            part = self.from_logits(pos[rows], logits, pos_ids[rows], ids, hits)
            total = total + part * len(rows)
        return total / max(len(pos_ids), 1)

    def negatives(self, targets: Tensor) -> Tensor:
        """``targets.shape + (K,)`` negative ids of the sampled losses (0 at padding)."""
        sampler = self.popularity or self.uniform
        if sampler is None:
            raise ValueError("ce samples no negatives")
        return sampler.sample(targets, self.k, self.generator)

    def from_logits(
        self,
        pos: Tensor,
        neg: Tensor,
        pos_ids: Tensor,
        neg_ids: Tensor,
        hits: Tensor | None = None,
    ) -> Tensor:
        """The sampled losses from (P,) positive and (P, K) negative logits and their ids;
        ``hits`` (P, K): negatives to leave out (equal to the positive; default: none for
        bce/bpr/gbce, whose per-position sampler never draws the positive)."""
        if self.name == "bce":
            return bce_loss(pos, neg)
        if self.name == "bpr":
            return bpr_loss(pos, neg)
        if self.name == "gbce":
            assert self.beta is not None
            if hits is not None:  # softplus(-inf) = 0: a masked negative adds nothing
                neg = neg.masked_fill(hits, float("-inf"))
            return gbce_loss(pos, neg, self.beta[self.item_domain[pos_ids]])
        if self.name == "sampled-softmax":
            assert self.popularity is not None
            if hits is None:
                hits = neg_ids == pos_ids.unsqueeze(-1)
            return sampled_softmax_loss(pos, neg, self.popularity.log_q[neg_ids], self.k, hits)
        raise ValueError(f"{self.name} is not computed from sampled logits")

    def from_table(self, users: Tensor, pos_ids: Tensor, table: Tensor) -> Tensor:
        """``ce`` from (P, U) user vectors and the (num_items + 1, U) item table."""
        return full_softmax_loss(
            users,
            pos_ids,
            table,
            self.domain_items,
            self.item_domain[pos_ids],
            matmul_dtype=self.ce_matmul_dtype,
        )

    def __call__(self, users: Tensor, targets: Tensor, encode: EncodeFn, table: TableFn) -> Tensor:
        """The loss at the real positions of ``targets`` (B, N), whose user vectors are
        ``users`` (P, U), in the order of ``targets[targets > 0]``."""
        real = targets > 0
        pos_ids = targets[real]
        if self.full:
            return self.from_table(users, pos_ids, table())
        if self.shared:
            negatives = self.shared_negatives()
            vectors = encode(torch.cat([pos_ids, negatives.flatten()]))
            n = len(pos_ids)
            return self.from_shared(users, pos_ids, vectors[:n], negatives, vectors[n:])
        neg_ids = self.negatives(targets)[real]  # (P, K)
        vectors = encode(torch.cat([pos_ids, neg_ids.flatten()]))
        pos = (users * vectors[: len(pos_ids)]).sum(-1)
        neg = (vectors[len(pos_ids) :].view(*neg_ids.shape, -1) @ users.unsqueeze(-1))[..., 0]
        return self.from_logits(pos, neg, pos_ids, neg_ids)


def item_counts(targets: np.ndarray, inputs: np.ndarray, num_items: int) -> np.ndarray:
    """(num_items + 1,) occurrences of each item in training rows (inputs' first items and
    every target: each item of a row once); index 0 (padding) is 0."""
    first = np.where((inputs > 0).any(1), inputs[np.arange(len(inputs)), (inputs > 0).argmax(1)], 0)
    counts = np.bincount(targets[targets > 0], minlength=num_items + 1)
    counts += np.bincount(first[first > 0], minlength=num_items + 1)
    return counts
