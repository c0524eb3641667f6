"""GPTQ against a straightforward reference loop (OBS with an explicitly updated inverse Hessian)
on a tiny layer, its defining property (a smaller layer output error than round-to-nearest on
correlated inputs, same grid), results exactly on the quantizer's grid, and bad inputs refused."""

import pytest
import torch

from quadapter.quant import FakeQuantizer
from quadapter.quant.functional import fake_quant_fixed
from quadapter.quant.gptq import gptq_quantize


def correlated_inputs(n: int, features: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Inputs whose channels are strongly correlated (a low-rank mix plus noise), with a few
    large-magnitude channels, as a transformer layer's inputs are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, features, generator=g, dtype=dtype)
    x = torch.randn(n, 4, generator=g, dtype=dtype) @ mix + 0.1 * torch.randn(n, features, generator=g, dtype=dtype)
    x[:, :2] *= 8
    return x


def layer(out: int, features: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(out, features, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_gptq(W: torch.Tensor, H: torch.Tensor, scale, zero_point, qmin, qmax, damp):
    """Column by column, the explicit inverse Hessian of the remaining columns (OBS/OBQ): the
    algorithm's definition, without Cholesky, blocks or lazy updates."""
    W, n = W.clone(), W.shape[1]
    H = H + damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype)
    Hinv, Q = torch.linalg.inv(H), torch.zeros_like(W)
    for i in range(n):
        q = fake_quant_fixed(W[:, i:i + 1], scale, zero_point, qmin, qmax, axis=0)[:, 0]
        d = Hinv[i, i]
        W[:, i:] -= ((W[:, i] - q) / d).unsqueeze(1) * Hinv[i, i:].unsqueeze(0)
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / d
        Q[:, i] = q
    return Q


@pytest.mark.parametrize("block_size", [128, 5])
def test_equals_the_reference_loop_on_a_tiny_layer(block_size):
    x, W = correlated_inputs(256, 12), layer(6, 12)
    H = 2 * x.T @ x / len(x)
    quantizer = FakeQuantizer(bits=3, symmetric=True, granularity="per_channel", axis=0)
    quantizer.calibrate()
    quantizer(W)
    quantizer.freeze()
    expected = reference_gptq(W, H, quantizer.scale, quantizer.zero_point, quantizer.qmin, quantizer.qmax, 0.01)
    got = gptq_quantize(W, H, quantizer, block_size=block_size, damp=0.01)
    torch.testing.assert_close(got.weight, expected, rtol=0, atol=1e-9)
    assert not torch.equal(got.weight, quantizer(W))  # not round-to-nearest


@pytest.mark.parametrize("granularity,group_size,act_order", [
    ("per_channel", None, False), ("per_channel", None, True), ("per_group", 8, False),
    ("per_group", 8, True), ("per_tensor", None, False)])
def test_smaller_output_error_than_round_to_nearest_and_exactly_on_the_grid(granularity, group_size, act_order):
    x, W = correlated_inputs(512, 32, dtype=torch.float32), layer(16, 32, dtype=torch.float32)
    axis = None if granularity == "per_tensor" else 0

    def quantizer():
        return FakeQuantizer(bits=3, symmetric=False, granularity=granularity, axis=axis, group_size=group_size)

    rtn = quantizer()
    rtn.calibrate()
    rtn(W)
    rtn.freeze()
    q = quantizer()
    result = gptq_quantize(W, x.T @ x, q, block_size=8, act_order=act_order)

    def error(Q):
        return (x @ (W - Q).T).pow(2).sum().item()

    assert error(result.weight) < 0.7 * error(rtn(W))
    torch.testing.assert_close(q(result.weight), result.weight, rtol=0, atol=0)  # on its grid


@pytest.mark.parametrize("granularity,group_size", [("per_channel", None), ("per_group", 4)])
def test_an_hf_conv1d_weight_in_out_gives_the_transposed_result(granularity, group_size):
    """GPT-2's Conv1D stores [in, out] and quantizes along axis 1: the same GPTQ, transposed."""
    x, W = correlated_inputs(128, 8), layer(6, 8)
    linear = gptq_quantize(W, x.T @ x, FakeQuantizer(bits=3, granularity=granularity, axis=0,
                                                     group_size=group_size))
    conv_q = FakeQuantizer(bits=3, granularity=granularity, axis=1, group_size=group_size)
    conv = gptq_quantize(W.t().contiguous(), x.T @ x, conv_q)
    torch.testing.assert_close(conv.weight, linear.weight.t(), rtol=0, atol=0)
    torch.testing.assert_close(conv_q(conv.weight), conv.weight, rtol=0, atol=0)


def test_dead_input_channels_quantize_to_zero():
    x, W = correlated_inputs(64, 8), layer(4, 8)
    x[:, 3] = 0  # never active in the calibration data
    q = FakeQuantizer(bits=4, symmetric=True, granularity="per_channel", axis=0)
    result = gptq_quantize(W, x.T @ x, q)
    assert result.dead_columns == 1 and torch.all(result.weight[:, 3] == 0)


def test_bad_quantizers_and_shapes_are_refused():
    W, H = layer(4, 8), torch.eye(8, dtype=torch.float64)
    with pytest.raises(ValueError, match="learnable range"):
        gptq_quantize(W, H, FakeQuantizer(bits=4, granularity="per_channel", axis=0, learnable="min_max"))
    with pytest.raises(ValueError, match="a Hessian \\[in, in\\]"):
        gptq_quantize(W, torch.eye(4), FakeQuantizer(bits=4))
