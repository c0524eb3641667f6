"""Our numerics against torch's fused fake-quant ops, bit for bit, values and gradients."""

import pytest
import torch

from quadapter.quant import FakeQuantizer, fake_quant, fake_quant_fixed, quant_range

BITS = [2, 3, 4, 8, 16]


def _near_ties(shape, scale, gen, levels=70000):
    """Values at and a few ulps around k + 0.5 steps, |k| < levels: inside and outside the grid."""
    k = torch.randint(-levels, levels, shape, generator=gen).float() + 0.5
    x = k * scale
    ulps = torch.randint(-2, 3, shape, generator=gen).float()
    return x + ulps * torch.finfo(torch.float32).eps * x.abs()


def _grad(f, x):
    x = x.clone().requires_grad_()
    y = f(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_pure_formula_matches_fused_per_tensor(bits, symmetric):
    gen = torch.Generator().manual_seed(bits)
    qmin, qmax = quant_range(bits, symmetric)
    for scale in (torch.tensor(0.0123), torch.tensor(2.0**-4), torch.rand((), generator=gen) + 1e-3):
        x = _near_ties((4096,), scale, gen, levels=2 ** (bits + 1))
        zp = torch.tensor(0 if symmetric else (qmax + 1) // 3, dtype=torch.int32)
        fused = torch.fake_quantize_per_tensor_affine
        y_ref, g_ref = _grad(lambda t: fused(t, scale, zp, qmin, qmax), x)
        y, g = _grad(lambda t: fake_quant(t, scale, zp.float(), qmin, qmax), x)
        assert torch.equal(y, y_ref)
        assert torch.equal(g, g_ref)
        assert 0 < g.count_nonzero() < g.numel()  # both clipped and unclipped values present


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_pure_formula_matches_fused_per_channel(bits, symmetric, axis):
    gen = torch.Generator().manual_seed(100 + bits)
    qmin, qmax = quant_range(bits, symmetric)
    scale = torch.rand(6, generator=gen) * 0.1 + 1e-3
    zp = torch.randint(qmin, qmax + 1, (6,), generator=gen, dtype=torch.int32)
    if symmetric:
        zp.zero_()
    x = _near_ties((6, 64), 1.0, gen, levels=2 ** (bits + 1)) * scale[:, None]
    x = x.T if axis == 1 else x
    shape = (1, -1) if axis == 1 else (-1, 1)
    fused = torch.fake_quantize_per_channel_affine
    y_ref, g_ref = _grad(lambda t: fused(t, scale, zp, axis, qmin, qmax), x)
    y, g = _grad(lambda t: fake_quant(t, scale.view(shape), zp.float().view(shape), qmin, qmax), x)
    assert torch.equal(y, y_ref)
    assert torch.equal(g, g_ref)


def test_rounding_is_half_to_even():
    scale = torch.tensor(0.25)  # power of two: x / s is exact, so these are true ties
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]) * scale
    expected = torch.tensor([-2.0, -2.0, 0.0, 0.0, 2.0, 2.0, 4.0]) * scale
    q = FakeQuantizer(bits=8, symmetric=True)
    q.set_range(-127 * scale, 127 * scale)
    assert q.scale == scale
    assert torch.equal(q(x), expected)
    assert torch.equal(fake_quant(x, scale, torch.tensor(0.0), -128, 127), expected)


def _reference_qparams(lo, hi, bits, symmetric):
    """Independent qparams: torch.ao's observer for asymmetric grids, max|x|/qmax for symmetric."""
    qmin, qmax = quant_range(bits, symmetric)
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / qmax, min=torch.finfo(torch.float32).eps)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    obs = torch.ao.quantization.observer.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.quint8, quant_min=qmin, quant_max=qmax
    )
    obs.min_val, obs.max_val = lo.reshape(-1), hi.reshape(-1)
    scale, zero_point = obs.calculate_qparams()
    return scale.reshape(lo.shape), zero_point.reshape(lo.shape)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_quantizer_matches_fused_ops_per_channel(bits, symmetric, axis):
    """Calibrated quantizer == fused op on independently computed qparams (axis 1 = HF Conv1D)."""
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 5, generator=gen) * torch.rand(8, 1, generator=gen) * 3
    q = FakeQuantizer(bits, symmetric, "per_channel", axis=axis).calibrate()
    q(w)
    q.freeze()
    lo, hi = torch.aminmax(w, dim=1 - axis)
    scale, zp = _reference_qparams(lo, hi, bits, symmetric)
    assert torch.equal(q.scale, scale) and torch.equal(q.zero_point, zp)
    x = torch.cat([w, 2 * w], dim=1 - axis)  # also values outside the range
    qmin, qmax = quant_range(bits, symmetric)
    fused = torch.fake_quantize_per_channel_affine
    y_ref, g_ref = _grad(lambda t: fused(t, scale, zp, axis, qmin, qmax), x)
    y, g = _grad(q, x)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantizer_matches_fused_ops_per_tensor(bits, symmetric):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(64, 16, generator=gen) + 0.7
    q = FakeQuantizer(bits, symmetric).calibrate()
    q(x[:32])
    q.freeze()
    scale, zp = _reference_qparams(x[:32].min().reshape(1), x[:32].max().reshape(1), bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    y_ref, g_ref = _grad(lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zp, qmin, qmax), x)
    y, g = _grad(q, x)
    assert torch.equal(y, y_ref) and torch.equal(g, g_ref)


@pytest.mark.parametrize("learnable", ["scale_offset", "min_max", "beta_gamma"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_learnable_path_equals_fused_path_at_init(learnable, symmetric, granularity):
    """The pure-torch (learnable) path must reproduce the fused fixed path exactly, grads included."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 12, generator=gen) * torch.rand(1, 12, generator=gen) * 4
    axis = 1 if granularity == "per_channel" else None
    lo, hi = (torch.aminmax(w, dim=0) if axis == 1 else torch.aminmax(w))
    x = torch.cat([w, 1.5 * w, _near_ties((4, 12), 0.01, gen)])
    for bits in (2, 4, 8, 16):
        fixed = FakeQuantizer(bits, symmetric, granularity, axis=axis)
        fixed.set_range(lo, hi)
        for sigmoid in ([False, True] if learnable == "beta_gamma" else [False]):
            learned = FakeQuantizer(
                bits, symmetric, granularity, axis=axis, learnable=learnable, sigmoid=sigmoid
            )
            learned.set_range(lo, hi)
            y_ref, g_ref = _grad(fixed, x)
            y, g = _grad(learned, x)
            assert torch.equal(y, y_ref), (bits, sigmoid)
            assert torch.equal(g, g_ref), (bits, sigmoid)


def test_per_token_matches_rowwise_fused_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=gen) * torch.rand(2, 5, 1, generator=gen) * 10
    for bits, symmetric in [(4, False), (8, True), (16, False)]:
        q = FakeQuantizer(bits, symmetric, "per_token")
        qmin, qmax = quant_range(bits, symmetric)
        rows = x.reshape(-1, 16)
        scale, zp = _reference_qparams(rows.amin(1), rows.amax(1), bits, symmetric)
        ref = torch.stack([
            torch.fake_quantize_per_tensor_affine(row, s, z, qmin, qmax)
            for row, s, z in zip(rows, scale, zp)
        ]).view_as(x)
        assert torch.equal(q(x), ref)
        assert q.scale.numel() == 0  # dynamic: nothing stored


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("learnable", ["none", "min_max"])
def test_low_precision_inputs_keep_dtype(dtype, learnable):
    w = torch.randn(8, 4).to(dtype)
    q = FakeQuantizer(8, granularity="per_channel", axis=0, learnable=learnable).calibrate()
    q(w)
    q.freeze()
    y = q(w)
    assert y.dtype == dtype
    assert torch.allclose(y.float(), w.float(), atol=q.scale.max().item() / 2 + 1e-2)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_fixed_fast_path_matches_fused_ops(bits, symmetric, grad):
    """The CPU chain (both its no-grad and its autograd form) against the fused kernels."""
    gen = torch.Generator().manual_seed(200 + bits)
    qmin, qmax = quant_range(bits, symmetric)
    scale = torch.rand(24, generator=gen) * 0.1 + 1e-3
    zp = torch.zeros(24, dtype=torch.int32) if symmetric else torch.randint(
        qmin, qmax + 1, (24,), generator=gen, dtype=torch.int32)
    x = _near_ties((3, 40, 24), 1.0, gen, levels=2 ** (bits + 1)) * scale
    for axis, s, z in ((None, scale[5], zp[5]), (2, scale, zp)):
        def fused(t):
            if axis is None:
                return torch.fake_quantize_per_tensor_affine(t, s, z, qmin, qmax)
            return torch.fake_quantize_per_channel_affine(t, s, z, axis, qmin, qmax)

        y_ref, g_ref = _grad(fused, x)
        if grad:
            y, g = _grad(lambda t: fake_quant_fixed(t, s, z, qmin, qmax, axis), x)
            assert torch.equal(g, g_ref)
        else:
            y = fake_quant_fixed(x, s, z, qmin, qmax, axis)
        assert torch.equal(y, y_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_fixed_fast_path_keeps_dtype_and_computes_in_fp32(dtype):
    x = (torch.randn(64, 8) * 3).to(dtype)
    scale, zp = torch.tensor(0.02), torch.tensor(100, dtype=torch.int32)
    y = fake_quant_fixed(x, scale, zp, 0, 255)
    assert y.dtype == dtype
    ref = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, 0, 255)
    assert torch.equal(y.float(), ref.to(dtype).float())
