"""The ranking losses (agent/models/ranking.py) on hand-checked tensors: value, gradient sign,
the chunked full softmax against the unchunked one, and the samplers they draw from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agent.models.ranking import (
    RankingLoss,
    bce_loss,
    chunked_logsumexp,
    full_softmax_loss,
    gbce_beta,
    gbce_loss,
    item_counts,
    sampled_softmax_loss,
)
from agent.models.sampling import PopularityNegativeSampler

LOG2 = math.log(2.0)
# ids 1..4 in domain 0, 5..10 in domain 1; id 0 is padding
DOMAIN_OF = np.array([-1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


def test_bce_at_zero_logits_is_log2_per_term() -> None:
    pos, neg = torch.zeros(3), torch.zeros(3, 4)
    assert bce_loss(pos, neg).item() == pytest.approx(LOG2 + 4 * LOG2)


def test_gbce_beta_matches_the_paper() -> None:
    # 1 negative of a 11-item pool: alpha = 1/10; t = 0 -> 1 (BCE); t = 1 -> alpha
    assert gbce_beta(1, 11, 0.0).item() == pytest.approx(1.0)
    assert gbce_beta(1, 11, 1.0).item() == pytest.approx(0.1)
    # t = 0.5: alpha (0.5 (1 - 10) + 10) = 0.1 * 5.5
    assert gbce_beta(1, 11, 0.5).item() == pytest.approx(0.55)
    # 256 negatives of 10,001 items, gSASRec's setting t = 0.75
    alpha = 256 / 10_000
    assert gbce_beta(256, 10_001, 0.75).item() == pytest.approx(
        alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha), rel=1e-6
    )


def test_gbce_is_beta_times_the_positive_term() -> None:
    pos, neg = torch.tensor([0.5, -1.0]), torch.tensor([[0.2, -0.3], [1.0, 0.0]])
    beta = 0.3
    expected = -beta * F.logsigmoid(pos).mean() - torch.log(1 - torch.sigmoid(neg)).sum(-1).mean()
    torch.testing.assert_close(gbce_loss(pos, neg, beta), expected)
    # beta = 1 is plain BCE
    torch.testing.assert_close(gbce_loss(pos, neg, 1.0), bce_loss(pos, neg))


@pytest.mark.parametrize("name", ["bce", "bpr", "gbce", "sampled-softmax"])
def test_gradients_raise_the_positive_and_lower_the_negatives(name: str) -> None:
    loss = RankingLoss(name, DOMAIN_OF, counts=np.ones(11), num_negatives=2)  # type: ignore[arg-type]
    pos = torch.tensor([0.3, -0.2], requires_grad=True)
    neg = torch.tensor([[0.1, 0.4], [-0.5, 0.2]], requires_grad=True)
    pos_ids, neg_ids = torch.tensor([1, 6]), torch.tensor([[2, 3], [7, 8]])
    loss.from_logits(pos, neg, pos_ids, neg_ids).backward()  # type: ignore[no-untyped-call]
    assert pos.grad is not None and neg.grad is not None
    assert (pos.grad < 0).all()  # descending the loss raises the positive logit
    assert (neg.grad > 0).all()  # and lowers every negative's


def test_sampled_softmax_value_and_logq_correction() -> None:
    # K = 2 negatives with Q = 0.5 each: log(K Q) = 0, so the logits enter unchanged
    pos, neg = torch.tensor([1.0]), torch.tensor([[0.0, 0.0]])
    log_q = torch.log(torch.full((1, 2), 0.5))
    value = sampled_softmax_loss(pos, neg, log_q, 2)
    assert value.item() == pytest.approx(math.log(math.e + 2) - 1)
    # a rarer negative (Q = 0.25) stands for more items: its logit rises by log 2
    log_q = torch.log(torch.tensor([[0.25, 0.5]]))
    value = sampled_softmax_loss(pos, neg, log_q, 2)
    assert value.item() == pytest.approx(math.log(math.e + 2 + 1) - 1)
    # an accidental hit is left out
    hits = torch.tensor([[True, False]])
    value = sampled_softmax_loss(pos, neg, torch.log(torch.full((1, 2), 0.5)), 2, hits)
    assert value.item() == pytest.approx(math.log(math.e + 1) - 1)


def test_sampled_softmax_with_every_item_once_is_the_full_softmax() -> None:
    # uniform Q over n items, K = n draws that happen to be each item once: the estimate of
    # the partition is exact
    torch.manual_seed(0)
    n = 6
    logits = torch.randn(n)
    target = 2
    others = [i for i in range(n) if i != target]
    neg = logits[others].unsqueeze(0)
    log_q = torch.full((1, n - 1), math.log(1 / (n - 1)))
    value = sampled_softmax_loss(logits[target : target + 1], neg, log_q, n - 1)
    expected = F.cross_entropy(logits.unsqueeze(0), torch.tensor([target]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_chunked_logsumexp_matches_the_full_one_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    users = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    items = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    for chunk in (1, 4, 11, 50):
        for keep in (0, 1000):  # backward recomputes / reuses the forward's exps
            torch.testing.assert_close(
                chunked_logsumexp(users, items, chunk, keep),
                torch.logsumexp(users @ items.T, dim=-1),
            )
    for keep in (0, 1000):
        assert torch.autograd.gradcheck(
            lambda u, i, k=keep: chunked_logsumexp(u, i, 4, k), (users, items)
        )


def test_full_softmax_is_cross_entropy_within_the_target_domain() -> None:
    torch.manual_seed(0)
    table = torch.randn(11, 4, requires_grad=True)
    users = torch.randn(3, 4, requires_grad=True)
    targets = torch.tensor([2, 7, 10])
    domains = [torch.arange(1, 5), torch.arange(5, 11)]
    target_domain = torch.tensor([0, 1, 1])
    value = full_softmax_loss(users, targets, table, domains, target_domain, chunk=2)
    expected = torch.stack(
        [
            F.cross_entropy(
                (users[p] @ table[domains[d]].T).unsqueeze(0),
                torch.tensor([int(targets[p]) - int(domains[d][0])]),
            )
            for p, d in enumerate(target_domain.tolist())
        ]
    ).mean()
    torch.testing.assert_close(value, expected)
    value.backward()  # type: ignore[no-untyped-call]
    assert table.grad is not None
    assert table.grad[0].abs().sum() == 0  # padding never scored
    # the target's row moves towards its user, a same-domain rival's away from it
    assert (table.grad[2] @ users[0]).item() < 0
    assert (table.grad[3] @ users[0]).item() > 0


def test_ranking_loss_ce_calls_the_table_and_ignores_padding() -> None:
    torch.manual_seed(0)
    table = torch.randn(11, 4)
    loss = RankingLoss("ce", DOMAIN_OF)
    targets = torch.tensor([[0, 2, 7]])
    users = torch.randn(2, 4)
    value = loss(users, targets, lambda ids: table[ids], lambda: table)
    expected = full_softmax_loss(
        users, torch.tensor([2, 7]), table, loss.domain_items, torch.tensor([0, 1])
    )
    torch.testing.assert_close(value, expected)


def test_negatives_default_per_loss_and_stay_in_domain() -> None:
    assert RankingLoss("bce", DOMAIN_OF).k == 1
    assert RankingLoss("bpr", DOMAIN_OF).k == 5
    assert RankingLoss("gbce", DOMAIN_OF).k == 256
    loss = RankingLoss(
        "gbce", DOMAIN_OF, num_negatives=8, generator=torch.Generator().manual_seed(0)
    )
    targets = torch.tensor([[0, 1, 6]])
    neg = loss.negatives(targets)
    assert neg.shape == (1, 3, 8)
    assert (neg[0, 0] == 0).all()
    assert set(neg[0, 1].tolist()) <= {2, 3, 4} and set(neg[0, 2].tolist()) <= set(range(5, 11))
    with pytest.raises(ValueError, match="sampled-softmax needs"):
        RankingLoss("sampled-softmax", DOMAIN_OF)


def test_popularity_sampler_follows_counts_within_the_domain() -> None:
    counts = np.array([0, 9, 0, 0, 0, 1, 1, 1, 1, 1, 94])  # +1 smoothing: 10,1,1,1 | 2,..,2,95
    sampler = PopularityNegativeSampler(DOMAIN_OF, counts)
    assert sampler.log_q[1].item() == pytest.approx(math.log(10 / 13))
    assert sampler.log_q[10].item() == pytest.approx(math.log(95 / 105))
    targets = torch.full((20_000,), 2)
    draws = sampler.sample(targets, 1, torch.Generator().manual_seed(0))[:, 0]
    assert set(torch.unique(draws).tolist()) <= {1, 2, 3, 4}
    assert (draws == 1).float().mean().item() == pytest.approx(10 / 13, abs=0.02)
    draws = sampler.sample(torch.full((20_000,), 5), 1, torch.Generator().manual_seed(1))[:, 0]
    assert set(torch.unique(draws).tolist()) <= set(range(5, 11))
    assert (draws == 10).float().mean().item() == pytest.approx(95 / 105, abs=0.02)
    assert (sampler.sample(torch.tensor([0]), 3) == 0).all()


def test_item_counts_count_each_item_of_a_row_once() -> None:
    # rows [3, 4, 5] and [4, 6] as shifted inputs/targets, left-padded to 3
    inputs = np.array([[0, 3, 4], [0, 0, 4]])
    targets = np.array([[0, 4, 5], [0, 0, 6]])
    counts = item_counts(targets, inputs, 6)
    assert counts.tolist() == [0, 0, 0, 1, 2, 1, 1]
