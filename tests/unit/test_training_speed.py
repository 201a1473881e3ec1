"""The cheaper training step computes what the plain one did: the dropout mask's law, SASRec's
attention in training, the fused text adapter layer, the fused sampled softmax, the chunked
full softmax in bfloat16, the allocator setting and the one-call early-stopping evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agent.config import Settings
from agent.data.schema import Dataset
from agent.models.base import Recommender
from agent.models.dropout import Dropout, dropout, dropout_mask, fast_kernels
from agent.models.ranking import (
    RankingLoss,
    chunked_logsumexp,
    masked_logsumexp,
    sampled_softmax_loss,
)
from agent.models.sasrec import IDItemEncoder, SASRec, attention_bias
from agent.models.sasrec_text import TextItemEncoder, layer_norm_linear
from agent.models.training import keep_freed_memory
from eval.evaluator import make_valid_fn

# ids 1..4 in domain 0, 5..10 in domain 1; id 0 is padding
DOMAIN_OF = np.array([-1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_mask_keeps_1_minus_p_and_rescales(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400_001)  # odd: half a 64-bit draw left over
    mask = dropout_mask(x.shape, p, x)
    kept = mask > 0
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    rate = float(kept.float().mean())
    assert abs(rate - (1 - p)) < 4 * math.sqrt(p * (1 - p) / len(x))  # 4 standard errors
    assert abs(float(mask.mean()) - 1.0) < 0.01  # expectation kept, as nn.Dropout does
    # independent halves of each 64-bit draw: neighbours are not correlated
    both = (kept[:-1:2] & kept[1::2]).float().mean()
    assert abs(float(both) - (1 - p) ** 2) < 0.01


def test_dropout_is_the_identity_in_eval_and_at_p_0_and_zero_at_p_1() -> None:
    x = torch.randn(3, 4)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.3).eval()
    assert module(x) is x
    with pytest.raises(ValueError):
        Dropout(1.5)


def test_without_fast_kernels_dropout_is_torchs_own() -> None:
    """Without the fast kernels (train.fast_kernels=false): the same masks as F.dropout from
    the same seed, so figures measured before the fast kernels reproduce; on: other masks."""
    x = torch.ones(1000)
    torch.manual_seed(3)
    expected = F.dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), expected)
    with fast_kernels(True):
        torch.manual_seed(3)
        assert not torch.equal(dropout(x, 0.2), expected)


def test_dropout_gradient_is_the_mask() -> None:
    torch.manual_seed(1)
    x = torch.randn(50, 8, requires_grad=True)
    with fast_kernels(True):
        out = dropout(x, 0.25)
    out.sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.where(out != 0, 1 / 0.75, 0.0))


def test_training_attention_matches_sdpa_when_nothing_is_dropped() -> None:
    torch.manual_seed(0)
    net = SASRec(IDItemEncoder(50, 16), max_len=20, layers=2, heads=2, dropout=0.3)
    ids = torch.tensor([[0, 0, 3, 7, 1, 9], [4, 12, 8, 30, 2, 5]])
    x = torch.randn(2, 6, 16)
    allowed = SASRec.attention_mask(ids)
    attn = net.blocks[0].attn
    attn.eval()
    expected = attn(x, x, allowed)
    attn.train()
    attn.dropout = 1e-12  # every weight kept, scaled by ~1: the manual path, no dropout
    with fast_kernels(True):
        torch.testing.assert_close(attn(x, x, allowed), expected)
        torch.testing.assert_close(attn(x, x, attention_bias(allowed, x.dtype)), expected)


def test_training_forward_stays_causal() -> None:
    torch.manual_seed(0)
    net = SASRec(IDItemEncoder(50, 16), max_len=20, layers=2, heads=1, dropout=0.3).train()
    seq = torch.tensor([[3, 7, 1, 9, 4, 12, 8, 30, 2, 5]])
    changed = seq.clone()
    changed[0, 7] = 41
    torch.manual_seed(5)
    a = net(seq)
    torch.manual_seed(5)  # the same dropout masks
    b = net(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)


def test_layer_norm_linear_is_linear_of_layer_norm() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64)
    normed = F.layer_norm(x, (5,))
    gain = torch.randn(5, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(
        layer_norm_linear(normed, gain, shift, weight, bias),
        F.linear(F.layer_norm(x, (5,), gain, shift), weight, bias),
    )
    assert torch.autograd.gradcheck(
        lambda g, s, w, b: layer_norm_linear(normed, g, s, w, b), (gain, shift, weight, bias)
    )


def test_text_adapter_in_training_matches_the_plain_modules() -> None:
    rng = np.random.default_rng(0)
    enc = TextItemEncoder(rng.standard_normal((30, 12)).astype(np.float32), 8, width=16)
    with torch.no_grad():  # a trained-looking LayerNorm, not the identity it starts as
        enc.adapter[0].weight.uniform_(0.5, 1.5)
        enc.adapter[0].bias.uniform_(-0.5, 0.5)
    feats = enc.get_buffer("features")[torch.tensor([1, 4, 9, 29, 4])]
    grads = []
    outs = []
    for fused in (False, True):
        enc.zero_grad(set_to_none=True)
        with fast_kernels(fused):
            out = enc.adapt(feats)
        (out * torch.linspace(-1, 1, 8)).sum().backward()  # type: ignore[no-untyped-call]
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in enc.adapter.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    assert len(grads[0]) == len(grads[1]) == 6
    for plain, fused_grad in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(fused_grad, plain, rtol=1e-4, atol=1e-5)


def test_masked_logsumexp_value_gradient_and_fully_masked_row() -> None:
    torch.manual_seed(0)
    users = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    items = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64)
    blocked = torch.zeros(4, 6, dtype=torch.bool)
    blocked[0, 2] = blocked[1, 0] = blocked[1, 5] = True
    expected = torch.logsumexp((users @ items.T + bias).masked_fill(blocked, -math.inf), -1)
    torch.testing.assert_close(masked_logsumexp(users, items, bias, blocked), expected)
    assert torch.autograd.gradcheck(
        lambda u, i: masked_logsumexp(u, i, bias, blocked), (users, items)
    )
    blocked[3] = True  # nothing left: -inf, and no gradient (not NaN)
    value = masked_logsumexp(users, items, bias, blocked)
    assert value[3] == -math.inf
    value[:3].sum().backward()  # type: ignore[no-untyped-call]
    assert users.grad is not None and torch.isfinite(users.grad).all()


def test_fused_sampled_softmax_matches_the_per_row_formula() -> None:
    torch.manual_seed(0)
    counts = np.array([0, 5, 1, 0, 9, 2, 2, 7, 0, 1, 4])
    loss = RankingLoss(
        "sampled-softmax",
        DOMAIN_OF,
        counts=counts,
        num_negatives=6,
        generator=torch.Generator().manual_seed(3),
    )
    negatives = loss.shared_negatives()  # (2, 6), popular items drawn more than once
    pos_ids = torch.tensor([1, 4, 4, 7, 10, 5, 7])
    users = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    table = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    value = loss.from_shared(users, pos_ids, table[pos_ids], negatives, table[negatives.flatten()])
    assert loss.popularity is not None
    rows = []
    for p, item in enumerate(pos_ids.tolist()):
        neg = negatives[int(DOMAIN_OF[item])]
        hits = (neg == item).unsqueeze(0)
        pos = (users[p] * table[item]).sum().unsqueeze(0)
        logits = (table[neg] @ users[p]).unsqueeze(0)
        log_q = loss.popularity.log_q[neg].double().unsqueeze(0)
        rows.append(sampled_softmax_loss(pos, logits, log_q, 6, hits))
    expected = torch.stack(rows).mean()
    assert any(bool((negatives[int(DOMAIN_OF[i])] == i).any()) for i in pos_ids.tolist())
    torch.testing.assert_close(value, expected)
    got = torch.autograd.grad(value, (users, table))
    want = torch.autograd.grad(expected, (users, table))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_chunked_logsumexp_in_bfloat16_stays_close_to_float32() -> None:
    # trained-model scale: logits within about +-10 over a domain of 3,000 items
    torch.manual_seed(0)
    users = (torch.randn(64, 32) * 0.6).requires_grad_()
    items = (torch.randn(3000, 32) * 0.6).requires_grad_()
    pos = torch.randint(0, 3000, (64,))
    results = []
    for dtype in (None, torch.bfloat16):
        for chunk, keep in ((256, None), (256, 0)):  # kept exps and recomputed ones
            lse = chunked_logsumexp(users, items, chunk, keep, matmul_dtype=dtype)
            value = (lse - (users * items[pos]).sum(-1)).mean()
            results.append((value, *torch.autograd.grad(value, (users, items))))
    ref = results[0]
    for value, gu, gi in results[1:]:
        assert value.dtype == torch.float32 and gu.dtype == gi.dtype == torch.float32
        assert abs(float((value - ref[0]).detach())) < 1e-3 * abs(float(ref[0].detach()))
        assert float((gu - ref[1]).norm() / ref[1].norm()) < 0.02
        assert float((gi - ref[2]).norm() / ref[2].norm()) < 0.02
    # float32 with and without kept exps: the same up to rounding
    torch.testing.assert_close(results[1][0], ref[0])


def test_keep_freed_memory_is_set_once() -> None:
    first = keep_freed_memory()
    assert isinstance(first, bool)
    assert keep_freed_memory() is first


def test_valid_fn_scores_every_user_in_one_call(slice_data: Dataset, settings: Settings) -> None:
    calls: list[int] = []

    class Counting(Recommender):
        name = "counting"

        def score(
            self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]
        ) -> list[np.ndarray]:
            calls.append(len(histories))
            return [np.zeros(len(c)) for c in candidates]

    tiny = settings.model_copy(update={"eval": settings.eval.model_copy(update={"batch_users": 2})})
    make_valid_fn(slice_data, tiny, protocol="sampled-100")(Counting(slice_data, tiny))
    assert calls == [len(slice_data.split("valid"))]
