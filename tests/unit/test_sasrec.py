"""The SASRec network: causal attention, padding that changes nothing, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.models.sasrec import IDItemEncoder, SASRec, left_pad, trim_left_padding


def make_net(heads: int = 1, max_len: int = 20) -> SASRec:
    torch.manual_seed(0)
    net = SASRec(IDItemEncoder(50, 16), max_len=max_len, layers=2, heads=heads, dropout=0.3)
    return net.eval()


@pytest.mark.parametrize("heads", [1, 2])
def test_future_items_do_not_change_earlier_outputs(heads: int) -> None:
    net = make_net(heads)
    seq = torch.tensor([[3, 7, 1, 9, 4, 12, 8, 30, 2, 5]])
    changed = seq.clone()
    changed[0, 7] = 41  # a later item
    with torch.no_grad():
        a, b = net(seq), net(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_past_items_change_later_outputs() -> None:
    net = make_net()
    seq = torch.tensor([[3, 7, 1, 9, 4, 12, 8, 30, 2, 5]])
    changed = seq.clone()
    changed[0, 2] = 41
    with torch.no_grad():
        a, b = net(seq), net(changed)
    torch.testing.assert_close(a[:, :2], b[:, :2], rtol=0, atol=0)
    for t in range(2, 10):  # every later position sees the change
        assert not torch.allclose(a[0, t], b[0, t])


def test_padding_does_not_change_real_outputs() -> None:
    net = make_net(heads=2)
    items = [4, 8, 15, 16, 23, 42]
    short = torch.from_numpy(left_pad([items], 8))
    long = torch.from_numpy(left_pad([items], 20))
    with torch.no_grad():
        a, b = net(short), net(long)
        batch = net(torch.from_numpy(left_pad([items, [1, 2, 3, 4, 5, 6, 7, 9, 10]], 20)))
    torch.testing.assert_close(a[:, -6:], b[:, -6:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch[:1], b, rtol=1e-6, atol=1e-6)  # neighbours don't leak
    assert torch.count_nonzero(b[:, :-6]) == 0  # padded positions output zeros
    assert torch.isfinite(net(torch.zeros(2, 5, dtype=torch.long))).all()  # all-padding rows


def test_sequences_longer_than_max_len_are_refused() -> None:
    with pytest.raises(ValueError, match="max_len"):
        make_net(max_len=4)(torch.ones(1, 5, dtype=torch.long))


def test_left_pad_keeps_the_most_recent_items() -> None:
    out = left_pad([[1, 2, 3, 4, 5], [7], []], 3)
    np.testing.assert_array_equal(out, [[3, 4, 5], [0, 0, 7], [0, 0, 0]])
    trimmed = trim_left_padding(torch.from_numpy(out[1:]))
    assert trimmed.tolist() == [[7], [0]]


def test_padding_embedding_is_zero_and_dropout_only_in_training() -> None:
    net = make_net()
    assert torch.count_nonzero(net.items(torch.tensor([0]))) == 0
    seq = torch.tensor([[3, 7, 1, 9]])
    with torch.no_grad():
        assert torch.equal(net(seq), net(seq))
        net.train()
        assert not torch.equal(net(seq), net(seq))
