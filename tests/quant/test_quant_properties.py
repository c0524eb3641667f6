"""Property tests: the output is on the grid, quantization is idempotent, error is bounded."""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quadapter.quant import LEARNABLE, FakeQuantizer, qparams_from_range

SETTINGS = settings(max_examples=50, deadline=None)


@st.composite
def quantized_case(draw):
    """A calibrated quantizer (any bits/symmetry/granularity/parameterization) and an input."""
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    values = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    n = rows * cols
    x = torch.tensor(draw(st.lists(values, min_size=n, max_size=n))).view(rows, cols)
    granularity = draw(st.sampled_from(["per_tensor", "per_channel", "per_token"]))
    learnable = "none" if granularity == "per_token" else draw(st.sampled_from(LEARNABLE))
    q = FakeQuantizer(
        bits=draw(st.integers(2, 16)),
        symmetric=draw(st.booleans()),
        granularity=granularity,
        axis=draw(st.sampled_from([0, 1])) if granularity == "per_channel" else None,
        learnable=learnable,
        sigmoid=learnable == "beta_gamma" and draw(st.booleans()),
    )
    calib = x * draw(st.floats(0.1, 2.0))  # calibration data: the input may fall outside its range
    q.calibrate()
    q(calib)
    q.freeze()
    return q, x


def _qparams(q, x):
    """(scale, zero point) broadcast to x, as the quantizer used them."""
    if q.granularity == "per_token":
        lo, hi = torch.aminmax(x, dim=-1)
        s, z = qparams_from_range(lo, hi, q.qmin, q.qmax, q.symmetric)
        return s[:, None], z[:, None]
    enc = q.encodings()
    s, z = torch.tensor(enc["scale"]), torch.tensor(enc["zero_point"], dtype=torch.float32)
    if q.granularity == "per_tensor":
        return s, z
    shape = [1, 1]
    shape[q.axis] = -1
    return s.view(shape), z.view(shape)


@SETTINGS
@given(quantized_case())
def test_output_lies_on_the_integer_grid(case):
    q, x = case
    y = q(x).double()
    s, z = (t.double() for t in _qparams(q, x))
    k = y / s + z
    assert torch.allclose(k, k.round(), rtol=0, atol=1e-6 * (1 + (y / s).abs().max().item()))
    assert (k.round() >= q.qmin).all() and (k.round() <= q.qmax).all()


@SETTINGS
@given(quantized_case())
def test_quantization_is_idempotent(case):
    q, x = case
    assume(q.granularity != "per_token")  # dynamic: Q(x) has its own, different row ranges
    y = q(x)
    assert torch.equal(q(y), y)


@SETTINGS
@given(quantized_case())
def test_error_at_most_half_a_step_inside_the_range(case):
    q, x = case
    s, z = _qparams(q, x)
    lo, hi = s * (q.qmin - z), s * (q.qmax - z)
    inside = (x >= lo) & (x <= hi)
    err = (q(x) - x).abs()
    bound = (s / 2) * (1 + 1e-5) + 1e-6 * x.abs()
    assert (err <= bound)[inside].all()


@SETTINGS
@given(quantized_case())
def test_disabled_is_identity(case):
    q, x = case
    y = q(x)
    q.disable()
    assert q(x) is x
    q.enable()
    assert torch.equal(q(x), y)
