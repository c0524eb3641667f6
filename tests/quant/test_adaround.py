"""AdaRound through the one FakeQuantizer: the rectified sigmoid and regulariser against their
formulas, the soft start equal to the FP weight and the hardened start equal to round-to-nearest
(per tensor, channel and group; nn.Linear and Conv1D layouts; fixed and learnable ranges),
gradients reaching V and the range, and the temperature schedule."""

import pytest
import torch

from quadapter.quant import FakeQuantizer
from quadapter.quant.adaround import GAMMA, ZETA, AdaRound, attach, beta_at

CASES = [("per_tensor", None, None), ("per_channel", 0, None), ("per_channel", 1, None),  # axis 1: Conv1D [in, out]
         ("per_group", 0, 8), ("per_group", 1, 4)]


def calibrated(granularity, axis, group_size, weight, learnable="none", symmetric=False, bits=3):
    q = FakeQuantizer(bits, symmetric, granularity, axis=axis, group_size=group_size, learnable=learnable)
    q.calibrate()
    q(weight)
    q.freeze()
    return q


@pytest.mark.parametrize("granularity,axis,group_size", CASES)
@pytest.mark.parametrize("learnable", ["none", "beta_gamma"])
def test_soft_start_is_the_weight_and_hard_start_is_round_to_nearest(granularity, axis, group_size, learnable):
    torch.manual_seed(0)
    weight = torch.randn(12, 16)
    q = calibrated(granularity, axis, group_size, weight, learnable)
    nearest = q(weight).detach()
    rounding = attach(q, weight)
    soft = q(weight)
    # h(V) = frac(w/s): the soft weight is the FP weight, except where the grid clips it (a rounded zero
    # point can push a range end just past qmin/qmax): there it is the clipped end, as round-to-nearest
    inside = (soft - weight).abs() <= 1e-5
    assert inside.float().mean() > 0.5  # only range ends clip (groups of 4 have many)
    torch.testing.assert_close(soft[~inside], nearest[~inside], rtol=0, atol=1e-6)
    rounding.harden()
    torch.testing.assert_close(q(weight), nearest, rtol=0, atol=0)  # ties aside, V >= 0 is frac >= 1/2
    q.set_rounding(None)
    torch.testing.assert_close(q(weight), nearest, rtol=0, atol=0)


def test_rectified_sigmoid_and_regulariser_follow_their_formulas():
    coords = torch.tensor([[0.1, 1.5, -2.75, 3.999]])
    r = AdaRound(coords)
    h = torch.clamp(torch.sigmoid(r.v) * (ZETA - GAMMA) + GAMMA, 0, 1)
    torch.testing.assert_close(r.offsets(), h)
    torch.testing.assert_close(h, coords - torch.floor(coords), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.regularizer(2.0), (1 - (2 * h - 1).abs() ** 2).sum())
    with torch.no_grad():
        r.v.copy_(torch.tensor([[-9.0, 9.0, 0.0, -0.1]]))
    r.harden()
    assert r.offsets().tolist() == [[0.0, 1.0, 1.0, 0.0]]
    assert float(r.regularizer(2.0)) == 0.0  # decided offsets cost nothing


def test_gradients_reach_the_rounding_and_a_learnable_range_and_a_changed_rounding_is_seen():
    from quadapter.quant.sim import QuantizedLayer, linear_forward

    torch.manual_seed(1)
    layer = torch.nn.Linear(16, 6)
    q = calibrated("per_group", 0, 8, layer.weight.detach(), learnable="beta_gamma")
    wrapped = QuantizedLayer(layer, linear_forward, None, q).eval()
    rounding = attach(q, layer.weight)
    x = torch.randn(4, 16)
    wrapped(x).pow(2).sum().backward()
    assert rounding.v.grad is not None and rounding.v.grad.abs().sum() > 0
    assert all(p.grad is not None for p in q.range_parameters())
    with torch.no_grad():
        soft = wrapped(x)  # cached while nothing needs a gradient ...
        rounding.harden()
        hard = wrapped(x)  # ... and recomputed once the rounding is hardened
    assert not torch.equal(soft, hard)
    with pytest.raises(ValueError, match="AdaRound was built for coordinates of shape"):
        rounding(torch.zeros(3, 3))


def test_temperature_schedule():
    assert beta_at(0.1, 20, 2, 0.2) is None  # warm-up: no regulariser
    assert beta_at(0.2, 20, 2, 0.2) == pytest.approx(20)
    assert beta_at(0.6, 20, 2, 0.2) == pytest.approx(11)
    assert beta_at(1.0, 20, 2, 0.2) == pytest.approx(2)
