"""Learnable ranges: gradients against an independent STE reference, and they actually learn."""

import pytest
import torch
from torch.func import functional_call

from quadapter.quant import FakeQuantizer, fake_quant, make_parameterization, quant_range


class _RoundSTE(torch.autograd.Function):
    """Reference STE: forward rounds (half to even), backward is the identity."""

    @staticmethod
    def forward(ctx, t):
        return torch.round(t)

    @staticmethod
    def backward(ctx, g):
        return g


def _clamp_ref(t, lo, hi):
    """Clamp whose gradient is the indicator of lo <= t <= hi, written with where."""
    return torch.where(t < lo, torch.full_like(t, lo), torch.where(t > hi, torch.full_like(t, hi), t))


def _ref_fq(x, s, z, qmin, qmax):
    q = _clamp_ref(_RoundSTE.apply(x * (1.0 / s)) + z, qmin, qmax)
    return s * (q - z)


def _ref_qparams(name, p, qmin, qmax, symmetric, numel, sigmoid=False, min0=None, max0=None):
    """The paper's formulas for (s, z) from raw parameters, written out independently."""
    if name == "scale_offset":
        g = 1.0 / (numel * qmax) ** 0.5
        scale_grad = lambda t: t * g + (t - t * g).detach()  # noqa: E731  (value t, gradient g)
        s = scale_grad(p["scale"])
        z = torch.zeros_like(s) if symmetric else _RoundSTE.apply(scale_grad(p["offset"]))
        return s, z
    if name == "beta_gamma":
        f = (lambda r: 2 * torch.sigmoid(r)) if sigmoid else (lambda r: r)
        tmax = f(p["gamma"]) * max0
        tmin = -tmax if symmetric else f(p["beta"]) * min0
    else:
        tmax = p["theta_max"]
        tmin = -tmax if symmetric else p["theta_min"]
    if symmetric:
        return tmax / qmax, torch.zeros_like(tmax)
    s = (tmax - tmin) / (qmax - qmin)
    return s, _RoundSTE.apply(qmin - tmin / s)


CASES = [
    ("scale_offset", False), ("min_max", False), ("beta_gamma", False), ("beta_gamma", True),
]


@pytest.mark.parametrize("name,sigmoid", CASES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_range_gradients_match_ste_reference(name, sigmoid, symmetric, per_channel):
    gen = torch.Generator().manual_seed(0)
    bits = 4
    qmin, qmax = quant_range(bits, symmetric)
    lo, hi = torch.tensor([-1.0, -0.3, -2.0]), torch.tensor([1.5, 0.9, 0.4])
    if not per_channel:
        lo, hi = lo[0], hi[0]
    # Inside the range, below it and above it, per channel (rows of x are channels).
    unit = torch.cat([
        torch.rand(3, 40, generator=gen) * 0.8 + 0.1,  # inside [0, 1]
        -torch.rand(3, 10, generator=gen) - 1.0,  # far below
        torch.rand(3, 10, generator=gen) + 1.0,  # far above
    ], 1)
    col = (-1, 1) if per_channel else ()
    x = unit * (hi - lo).view(col) + lo.view(col)
    granularity, axis = ("per_channel", 0) if per_channel else ("per_tensor", None)
    q = FakeQuantizer(bits, symmetric, granularity, axis=axis, learnable=name, sigmoid=sigmoid)
    q.set_range(lo, hi)
    with torch.no_grad():  # move off the calibrated point so nothing sits on a boundary
        for p in q.range_parameters():
            p.mul_(1.0 + 0.05 * torch.rand(p.shape, generator=gen))
    weights = torch.randn(x.shape, generator=gen)
    x1 = x.clone().requires_grad_()
    (q(x1) * weights).sum().backward()

    # The reference runs in float64: range gradients are sums of terms of both signs, and the
    # fp32 autograd chain is itself off by ~1e-5 relative after their cancellation.
    params = {n: p.detach().double().requires_grad_() for n, p in q.learned_range.named_parameters()}
    buffers = {n: b.double() for n, b in q.learned_range.named_buffers()}
    x2 = x.double().requires_grad_()
    numel = x.numel() // q.scale.numel()
    s, z = _ref_qparams(
        name, params, qmin, qmax, symmetric, numel, sigmoid, buffers.get("min0"), buffers.get("max0")
    )
    y_ref = _ref_fq(x2, s.reshape(col), z.reshape(col), qmin, qmax)
    (y_ref * weights.double()).sum().backward()

    assert torch.allclose(q(x).double(), y_ref.detach(), rtol=0, atol=1e-6)
    assert torch.equal(x1.grad, x2.grad.float())  # the in-grid indicator times the weights
    assert x1.grad.count_nonzero() < x1.numel()  # some inputs were clipped
    for n, p in q.learned_range.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        assert torch.allclose(p.grad.double(), params[n].grad, rtol=1e-5, atol=1e-6), n


def test_scale_offset_gradient_is_lsq_analytic():
    """Scale gradient: round(x/s) - x/s inside, qmin - z / qmax - z outside; offset: -s outside."""
    qmin, qmax = quant_range(4, False)
    q = FakeQuantizer(4, learnable="scale_offset")
    q.set_range(torch.tensor(-0.6), torch.tensor(0.9))  # s = 0.1, z = 6
    s, z = q.scale.item(), q.zero_point.item()
    x = torch.tensor([0.12, -0.33, 0.74, -5.0, 5.0])
    q(x).sum().backward()
    t = x / s
    inside = (torch.round(t) + z >= qmin) & (torch.round(t) + z <= qmax)
    ds = torch.where(inside, torch.round(t) - t, torch.where(t < 0, qmin - z, qmax - z)).sum()
    dz = torch.where(inside, 0.0, -s).sum()
    g = 1.0 / (x.numel() * qmax) ** 0.5
    assert torch.allclose(q.learned_range.scale.grad, ds * g, rtol=1e-5)
    assert torch.allclose(q.learned_range.offset.grad, dz * g, rtol=1e-5)


@pytest.mark.parametrize("name,sigmoid,param", [
    ("scale_offset", False, "scale"), ("min_max", False, "theta_max"),
    ("beta_gamma", False, "gamma"), ("beta_gamma", True, "gamma"),
])
def test_gradcheck_where_output_is_smooth(name, sigmoid, param):
    """Clipped outputs s·qmin, s·qmax of a symmetric grid are smooth in the range: STE is exact.

    2 bits (qmax = 1) and one element per scale make LSQ's gradient scale 1, so the scale_offset
    gradient is the plain derivative too.
    """
    qmin, qmax = quant_range(2, True)
    lo = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    hi = torch.tensor([0.5, 1.5], dtype=torch.float64)
    module = make_parameterization(name, lo, hi, qmin, qmax, True, sigmoid).double()
    x = torch.tensor([[-9.0, 7.0, 8.0], [5.0, -6.0, 9.0]], dtype=torch.float64)

    def f(p):
        s, z = functional_call(module, {param: p}, (1,))
        return fake_quant(x, s.view(-1, 1), z.view(-1, 1), qmin, qmax)

    p0 = dict(module.named_parameters())[param].detach().clone().add_(0.1).requires_grad_()
    assert torch.autograd.gradcheck(f, (p0,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,sigmoid,lr", [
    ("scale_offset", False, 0.05),
    ("min_max", False, 0.01),
    ("beta_gamma", False, 0.01),
    ("beta_gamma", True, 0.02),
])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ranges_learn_toward_a_target_range(name, sigmoid, lr, symmetric):
    """Start from the min-max range and learn to reproduce a quantizer with a narrower range."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen) * torch.rand(1, 8, generator=gen).add(0.5) + 0.3
    lo, hi = torch.aminmax(x, dim=0)
    target = FakeQuantizer(3, symmetric, "per_channel", axis=1)
    target.set_range(0.6 * lo, 0.7 * hi)
    y = target(x)
    q = FakeQuantizer(3, symmetric, "per_channel", axis=1, learnable=name, sigmoid=sigmoid)
    q.set_range(lo, hi)
    assert q.parameterization == name
    opt = torch.optim.Adam(q.range_parameters(), lr=lr)
    losses = []
    for _ in range(200):
        loss = (q(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0], (losses[0], losses[-10:])
