"""The methods' losses on hand-checkable tensors: value, sign, scale, gradient direction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agent.models.losses import (
    bpr_loss,
    contrastive_regularization,
    generalization_beta,
    generalization_loss,
    inter_domain_compactness,
    intra_domain_diversity,
    view_alignment,
)


def entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p)


def softmax(xs: list[float]) -> list[float]:
    z = [math.exp(x) for x in xs]
    return [v / sum(z) for v in z]


SIG = math.e / (1 + math.e)  # softmax([1, 0])[0]
H_SIG = entropy([SIG, 1 - SIG])  # 0.5822...


def test_contrastive_regularization_on_2x2_by_hand() -> None:
    eye = torch.eye(2)
    # x = y = I: logits I, targets softmax((I + I) / 2) = softmax(I): the CE is the entropy
    assert float(contrastive_regularization(eye, eye)) == pytest.approx(H_SIG, abs=1e-6)
    # y = 2I: logits 2I, targets softmax((I + 4I) / 2) = softmax(2.5 I)
    t, p = softmax([2.5, 0.0]), softmax([2.0, 0.0])
    by_hand = -(t[0] * math.log(p[0]) + t[1] * math.log(p[1]))
    assert float(contrastive_regularization(eye, 2 * eye)) == pytest.approx(by_hand, abs=1e-6)
    # tau divides the logits and multiplies the targets' similarities
    t, p = softmax([2.5 * 2, 0.0]), softmax([2.0 / 2, 0.0])
    by_hand = -(t[0] * math.log(p[0]) + t[1] * math.log(p[1]))
    got = contrastive_regularization(eye, 2 * eye, tau=2.0)
    assert float(got) == pytest.approx(by_hand, abs=1e-6)


def test_contrastive_regularization_prefers_true_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, generator=g)
    y = x + 0.1 * torch.randn(8, 4, generator=g)
    aligned = contrastive_regularization(x, y)
    shuffled = contrastive_regularization(x, y[torch.roll(torch.arange(8), 1)])
    assert float(shuffled) > float(aligned) > 0
    assert float(contrastive_regularization(x[:1], y[:1])) == 0.0  # one pair: nothing to tell
    with pytest.raises(ValueError, match="shape"):
        contrastive_regularization(x, y[:, :3])


def test_contrastive_gradient_pulls_a_pair_together() -> None:
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(6, 5, generator=g), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    torch.autograd.backward(contrastive_regularization(x, y))
    assert x.grad is not None
    moved = x.detach() - 0.5 * x.grad
    before = (x.detach() * y).sum(-1) - (x.detach() @ y.T).mean(-1)
    after = (moved * y).sum(-1) - (moved @ y.T).mean(-1)
    assert (after > before).float().mean() >= 5 / 6  # x_i moves towards y_i, off the others


def test_view_alignment_reuses_the_contrastive_loss() -> None:
    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(5, 3, generator=g) for _ in range(3))
    one = contrastive_regularization(a, b)
    assert float(view_alignment(a, [b])) == pytest.approx(float(one))
    two = (one + contrastive_regularization(a, c)) / 2
    assert float(view_alignment(a, [b, c])) == pytest.approx(float(two))
    assert float(view_alignment(a, [])) == 0.0


THREE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_intra_domain_diversity_by_hand() -> None:
    # item 0 vs the others: cos 0 and -1 -> softmax [sig, 1-sig]; item 1: cos 0, 0 -> uniform
    by_hand = H_SIG + math.log(2) + H_SIG
    same = torch.zeros(3, dtype=torch.long)
    assert float(intra_domain_diversity(THREE, same, tau=1.0)) == pytest.approx(by_hand, abs=1e-6)
    # scale-free (cosine); another domain's item, alone in its domain, changes nothing
    assert float(intra_domain_diversity(5 * THREE, same, tau=1.0)) == pytest.approx(by_hand)
    more = torch.cat([THREE, torch.tensor([[0.3, 0.7]])])
    doms = torch.tensor([0, 0, 0, 1])
    assert float(intra_domain_diversity(more, doms, tau=1.0)) == pytest.approx(by_hand)
    # tau sharpens: lower entropy
    assert float(intra_domain_diversity(THREE, same, tau=0.1)) < by_hand


def test_diversity_gradient_pushes_same_domain_neighbours_apart() -> None:
    # items 0 and 1 are near neighbours; 2 and 3 are orthogonal to them and to each other
    e = torch.tensor(
        [[1.0, 0.1, 0.0, 0.0], [1.0, -0.1, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        requires_grad=True,
    )
    doms = torch.zeros(4, dtype=torch.long)
    loss = generalization_loss(e, doms, alpha=1.0, tau=0.5, inter=False)  # = -alpha * L_intra
    torch.autograd.backward(loss)
    assert e.grad is not None
    moved = e.detach() - 0.05 * e.grad
    e = e.detach()
    cos = F.cosine_similarity
    assert float(cos(moved[0], moved[1], dim=0)) < float(cos(e[0], e[1], dim=0))
    assert float(intra_domain_diversity(moved, doms, 0.5)) > float(
        intra_domain_diversity(e, doms, 0.5)
    )


def test_inter_domain_compactness_by_hand_and_with_two_domains() -> None:
    # one item per domain: each center is its item; item 0 sees centers 1, 2 at cos 0, -1
    doms = torch.tensor([0, 1, 2])
    by_hand = H_SIG + math.log(2) + H_SIG
    assert float(inter_domain_compactness(THREE, doms, tau=1.0)) == pytest.approx(by_hand)
    # two domains: one other center, a softmax over one entry: identically 0, no gradient
    e = torch.randn(6, 3, requires_grad=True)
    two = inter_domain_compactness(e, torch.tensor([0, 0, 0, 1, 1, 1]))
    torch.autograd.backward(two)
    assert two.item() == 0.0 and e.grad is not None and float(e.grad.abs().sum()) == 0.0


def test_compactness_gradient_lowers_the_entropy_over_other_centers() -> None:
    g = torch.Generator().manual_seed(3)
    e = torch.randn(9, 4, generator=g).requires_grad_()
    doms = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    loss = generalization_loss(e, doms, alpha=1.0, beta=1.0, tau=0.5, intra=False)
    torch.autograd.backward(loss)
    assert e.grad is not None
    moved = e.detach() - 0.05 * e.grad
    assert float(inter_domain_compactness(moved, doms, 0.5)) < loss.item()


def test_generalization_loss_sign_and_beta() -> None:
    g = torch.Generator().manual_seed(4)
    e = torch.randn(9, 4, generator=g)
    doms = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    intra, inter = intra_domain_diversity(e, doms), inter_domain_compactness(e, doms)
    beta = generalization_beta(0.01, 3, 3)
    assert beta == pytest.approx(0.01 * 3 / 27)
    got = generalization_loss(e, doms, alpha=0.01)  # beta from N = 3 per domain, D = 3
    assert float(got) == pytest.approx(float(-0.01 * intra + beta * inter), abs=1e-7)
    assert float(generalization_loss(e, doms, alpha=0.01, intra=False, inter=False)) == 0.0
    only_intra = generalization_loss(e, doms, alpha=0.01, inter=False)
    assert float(only_intra) < 0  # entropies are >= 0 and the intra term enters negated


def test_bpr_loss_values() -> None:
    zeros = torch.zeros(3)
    assert float(bpr_loss(zeros, torch.zeros(3, 5))) == pytest.approx(math.log(2))
    assert float(bpr_loss(torch.full((3,), 20.0), torch.zeros(3, 5))) < 1e-6
    assert float(bpr_loss(zeros, torch.full((3, 5), 20.0))) == pytest.approx(20.0, abs=1e-6)
