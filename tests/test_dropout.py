"""recsys_models/dropout.py: nn.Dropout's behaviour from a byte-per-element draw."""

from __future__ import annotations

import pytest
import torch

from recsys_models.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_about_p_of_the_elements_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = Dropout(p)(x)
    dropped = float((out == 0).float().mean())
    assert abs(dropped - round(p * 256) / 256) < 0.005
    assert abs(float(out.mean()) - 1.0) < 0.01  # kept elements are scaled up to match
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 256 / (256 - round(p * 256))))


def test_identity_in_eval_mode_and_at_zero_and_seeded_in_training():
    x = torch.randn(4, 7, 3)
    assert Dropout(0.3).eval()(x) is x and Dropout(0.0)(x) is x
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    torch.manual_seed(5)
    first = Dropout(0.3)(x)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.3)(x), first)  # the global generator decides the mask
    x.requires_grad_()
    out = Dropout(0.3)(x)
    out.sum().backward()  # the gradient is the mask times the scale
    torch.testing.assert_close(x.grad, out.detach() / x.detach())
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)
