"""The adapter losses on hand-made logits: values, and which way the gradient pushes."""

from __future__ import annotations

import math

import torch

from finetune.losses import IGNORE, answer_lm_loss, pairwise_label_loss, verbalizer_loss
from finetune.render import Encoded
from finetune.trainer import collate, example_stream


def test_verbalizer_ce_is_the_target_labels_negative_logprob() -> None:
    logits = torch.zeros(1, 6)
    logits[0, 2] = math.log(3.0)  # p(token 2) = 3 / 8, the others 1 / 8 each
    label_ids = torch.tensor([[1, 2, 3]])
    loss = verbalizer_loss(logits, label_ids, torch.tensor([1]))
    assert math.isclose(loss.item(), -math.log(3 / 8), rel_tol=1e-6)
    wrong = verbalizer_loss(logits, label_ids, torch.tensor([0]))
    assert math.isclose(wrong.item(), -math.log(1 / 8), rel_tol=1e-6)


def test_pairwise_term_is_ranknet_over_labels() -> None:
    label_logits = torch.tensor([[2.0, 0.0, 1.0]])
    # target 0 against labels 1 and 2: softplus(-(2-0)) and softplus(-(2-1)), averaged.
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    got = pairwise_label_loss(label_logits, torch.tensor([0]))
    assert math.isclose(got.item(), expected, rel_tol=1e-6)
    # Equal logits: log 2 each.
    flat = pairwise_label_loss(torch.zeros(2, 4), torch.tensor([1, 3]))
    assert math.isclose(flat.item(), math.log(2.0), rel_tol=1e-6)


def test_pairwise_gradient_raises_target_and_lowers_others() -> None:
    logits = torch.zeros(1, 5, requires_grad=True)
    label_ids = torch.tensor([[0, 1, 2]])
    loss = verbalizer_loss(logits, label_ids, torch.tensor([2]), pairwise_weight=1.0)
    loss.backward()
    grad = logits.grad
    assert grad is not None
    assert grad[0, 2] < 0  # descending the gradient raises the target's logit
    assert grad[0, 0] > 0 and grad[0, 1] > 0
    ce_only = torch.zeros(1, 5, requires_grad=True)
    verbalizer_loss(ce_only, label_ids, torch.tensor([2])).backward()
    assert ce_only.grad is not None
    assert grad[0, 0] > ce_only.grad[0, 0]  # the pairwise term pushes the rivals down harder


def test_answer_lm_loss_ignores_prompt_positions() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 3] = 10.0
    labels = torch.tensor([[IGNORE, 3, IGNORE]])
    loss = answer_lm_loss(logits, labels)
    expected = -torch.log_softmax(logits[0, 1], dim=-1)[3].item()
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_collate_left_pads_and_aligns_answer_labels() -> None:
    rows = [
        Encoded("a", [5, 6, 7], [8, 9], [1, 2], 0),
        Encoded("b", [5], [8], [1, 2], 1),
    ]
    verb = collate(rows, pad_id=0, kind="verbalizer")
    assert verb["input_ids"].tolist() == [[5, 6, 7], [0, 0, 5]]
    assert verb["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert verb["keep"] == 1
    lst = collate(rows, pad_id=0, kind="listwise")
    assert lst["input_ids"].tolist() == [[5, 6, 7, 8, 9], [0, 0, 0, 5, 8]]
    # Last 3 positions kept; position p predicts token p + 1.
    assert lst["keep"] == 3
    assert lst["labels"].tolist() == [[8, 9, IGNORE], [IGNORE, 8, IGNORE]]


def test_example_stream_resumes_at_the_same_place() -> None:
    full = [next(s) for s in [example_stream(7, 3, 0)] for _ in range(1)]
    stream = example_stream(7, 3, 0)
    first_20 = [next(stream) for _ in range(20)]
    resumed = example_stream(7, 3, 11)
    assert [next(resumed) for _ in range(9)] == first_20[11:]
    assert sorted(first_20[:7]) == list(range(7))  # each epoch is a permutation
    assert full == first_20[:1]
