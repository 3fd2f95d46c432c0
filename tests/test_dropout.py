"""Global-batch dropout: the masks of an image do not depend on how the batch is split."""

import torch

from diffmem.denoisers.dropout import dropout, global_batch_dropout


def _two_calls(x, seed, batch, offset):
    with global_batch_dropout(seed, batch, offset):
        return dropout(dropout(x, 0.3), 0.5)  # two calls: the stream is consumed in order


def test_split_batches_get_the_rows_of_the_whole_batch():
    x = torch.randn(8, 4, 5, 5) + 3
    whole = _two_calls(x, 11, 8, 0)
    halves = torch.cat([_two_calls(x[:4], 11, 8, 0), _two_calls(x[4:], 11, 8, 4)])
    quarters = torch.cat([_two_calls(x[i : i + 2], 11, 8, i) for i in range(0, 8, 2)])
    assert torch.equal(whole, halves) and torch.equal(whole, quarters)
    assert not torch.equal(whole, _two_calls(x, 12, 8, 0))


def test_drop_rate_scaling_and_plain_behaviour():
    x = torch.ones(64, 32, 8, 8)
    with global_batch_dropout(0, 64, 0):
        y = dropout(x, 0.25)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert torch.equal(dropout(x, 0.25, training=False), x)  # eval: identity
    torch.manual_seed(0)
    a = dropout(x, 0.25)  # outside the context: ordinary F.dropout
    torch.manual_seed(0)
    assert torch.equal(a, torch.nn.functional.dropout(x, 0.25))


def test_gradients_flow_through_kept_units():
    x = torch.randn(4, 3, requires_grad=True)
    with global_batch_dropout(5, 4, 0):
        y = dropout(x, 0.5)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0)) and (x.grad[~kept] == 0).all()
