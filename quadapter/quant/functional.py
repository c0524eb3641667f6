"""Stateless quantization math shared by quantizers, learnable ranges and range estimators.

Numerics follow torch's fused fake-quant kernels exactly: they multiply by the reciprocal scale
(``x * (1/s)``, not ``x / s``) and round half to even, so the pure-torch paths here are
bit-identical to them and can stand in wherever they cannot be used (learnable ranges) or are slow
(fixed ranges on the CPU, see ``fake_quant_fixed``).
"""

from typing import Callable

import torch
from torch import Tensor

EPS = torch.finfo(torch.float32).eps  # smallest scale: degenerate ranges never give s = 0 or NaN


def round_ste(x: Tensor) -> Tensor:
    """Round half to even; the backward pass treats rounding as identity."""
    return x + (torch.round(x) - x).detach()


def grad_scale(p: Tensor, g: float) -> Tensor:
    """Value of ``p`` with its gradient multiplied by ``g`` (LSQ).

    Written as ``p + (p*g - p*g)`` rather than ``(p - p*g).detach() + p*g`` so the forward value
    is exactly ``p``: a learnable quantizer must reproduce the fixed one bit for bit at init.
    """
    pg = p * g
    return p.detach() + (pg - pg.detach())


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid: signed ``[-2^(b-1), 2^(b-1)-1]`` if symmetric, else unsigned ``[0, 2^b-1]``."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qparams_from_range(
    lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """Scale and (integer-valued, float) zero point that cover ``[lo, hi]`` and the value 0.

    Symmetric uses ``s = max|x| / qmax`` so the observed range is never clipped (the extra
    negative level stays unused). Differentiable in ``lo``/``hi`` via a straight-through round,
    which is what the min/max and beta/gamma parameterizations train through.
    """
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp_min(EPS)
        return scale, torch.zeros_like(scale)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(EPS)
    zero_point = round_ste(qmin - lo / scale).clamp(qmin, qmax)
    return scale, zero_point


class _FakeQuantSTE(torch.autograd.Function):
    """``(clamp(round(x·(1/s)) + z, qmin, qmax) − z)·s`` with its straight-through gradients
    written out, instead of autograd tracing a dozen elementwise ops (and saving their outputs).

    With ``r = round(x/s)``, ``q = r + z`` and ``inside = qmin ≤ q ≤ qmax`` (round as identity):
    ``∂/∂x = inside``; ``∂/∂s = (clamp(q) − z) − inside·x/s`` (LSQ: ``r − x/s`` inside,
    ``qmin − z`` / ``qmax − z`` outside); ``∂/∂z = −s·(1 − inside)``; gradients of ``s`` and ``z``
    are summed over the elements each covers. The backward recomputes from the saved input, so
    the forward allocates only its output (what a QAT step pays for most).
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        ctx.save_for_backward(x, scale, zero_point)
        ctx.grid = qmin, qmax
        return (torch.mul(x, 1.0 / scale).round_().add_(zero_point).clamp_(qmin, qmax)
                .sub_(zero_point).mul_(scale))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax = ctx.grid
        y = torch.mul(x, 1.0 / scale)
        q = y.round().add_(zero_point)
        clamped = q.clamp(qmin, qmax)
        inside = q.sub_(clamped).abs_().clamp_(max=1).neg_().add_(1)  # 1 inside, 0 outside
        grad_x = grad_s = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * inside
        if ctx.needs_input_grad[1]:
            d_scale = clamped.sub_(zero_point).sub_(y.mul_(inside))
            grad_s = d_scale.mul_(grad).sum_to_size(scale.shape)
        if ctx.needs_input_grad[2]:
            grad_z = inside.sub_(1).mul_(grad).sum_to_size(zero_point.shape).mul_(scale)
        return grad_x, grad_s, grad_z, None, None


def fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Quantize-dequantize with STE; gradients reach ``x`` (inside the grid) and the qparams.

    ``scale``/``zero_point`` must broadcast against ``x``; ``zero_point`` holds integer values.
    Computes in at least the qparams' precision (fp32), as the fused kernels do: a 16-bit grid
    cannot be rounded correctly in half or bfloat16. The gradient to ``x`` is exactly the
    in-grid indicator, as in the fused kernels, not ``s * (1/s) * indicator`` (off by an ulp).
    """
    xf = x.to(torch.promote_types(x.dtype, scale.dtype))
    return _FakeQuantSTE.apply(xf, scale, zero_point, qmin, qmax).to(x.dtype)


class _FixedFakeQuantSTE(torch.autograd.Function):
    """``clamp(round(x·inv), lo, hi)·s`` with the fused kernels' gradient: the in-grid mask.

    ``clamp(round(y) + z, qmin, qmax) − z == clamp(round(y), qmin − z, qmax − z)`` exactly, since
    every operand is an integer-valued float far below 2^24: one op fewer than the textbook form.
    The backward recomputes the mask from the saved input instead of keeping one from the
    forward: the forward then allocates only its output (fresh activation memory, page faults
    included, is what fake quantization costs most in a training step). With scalar bounds the
    mask and its product with the gradient are one fused ``hardtanh_backward`` pass; with
    per-channel bounds the mask is ``1 − min(|r − clamp(r)|, 1)`` in float, since bool-valued ops
    are 3-6x slower on the CPU.
    """

    @staticmethod
    def forward(ctx, x: Tensor, inv: Tensor | float, scale: Tensor | float, lo, hi) -> Tensor:
        ctx.save_for_backward(x)
        ctx.qparams = inv, lo, hi
        return torch.mul(x, inv).round_().clamp_(lo, hi).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        inv, lo, hi = ctx.qparams
        r = torch.mul(x, inv).round_()
        if not isinstance(lo, Tensor):  # integer r: lo ≤ r ≤ hi ⟺ lo − ½ < r < hi + ½: one pass
            return torch.ops.aten.hardtanh_backward(grad, r, lo - 0.5, hi + 0.5), None, None, None, None
        inside = r.sub_(r.clamp(lo, hi)).abs_().clamp_(max=1).neg_().add_(1)
        return inside.mul_(grad), None, None, None, None


def fake_quant_fixed(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Fake quantization with constant qparams (per tensor, or per channel along ``axis``).

    Gradient to ``x`` only (the in-grid indicator), as ``torch.fake_quantize_per_*_affine``, to
    which the result is bit-identical. On the CPU those fused kernels are scalar loops that also
    always write a mask (~2.7 ns/element on 2 cores, 40% of a d=192 matmul's time); the in-place
    elementwise chain used there instead is vectorized and ~10x faster. Other devices keep the
    fused kernels: one pass over memory.
    """
    if x.device.type != "cpu":
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)
    xf = x.to(torch.promote_types(x.dtype, scale.dtype))
    inv = 1.0 / scale  # fp32 reciprocal, as the fused kernels compute it
    if axis is None:  # Python scalars: 0-dim tensor bounds send clamp down a 10x slower path
        z = zero_point.item()
        inv, scale, lo, hi = inv.item(), scale.item(), qmin - z, qmax - z
    else:
        shape = [-1 if d == axis else 1 for d in range(x.dim())]
        inv, scale = inv.view(shape), scale.view(shape)
        if zero_point.any():
            z = zero_point.to(scale.dtype).view(shape)
            lo, hi = qmin - z, qmax - z
        else:  # symmetric: scalar bounds take clamp's and the backward's fast paths
            lo, hi = qmin, qmax
    if torch.is_grad_enabled() and x.requires_grad:
        out = _FixedFakeQuantSTE.apply(xf, inv, scale, lo, hi)
    else:
        out = torch.mul(xf, inv).round_().clamp_(lo, hi).mul_(scale)
    return out.to(x.dtype)


def fake_quant_rounded(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                       rounding: Callable[[Tensor], Tensor]) -> Tensor:
    """``(clamp(rounding(x·(1/s)) + z, qmin, qmax) − z)·s``: quantize-dequantize with a learned
    rounding (AdaRound) in place of round-to-nearest; gradients flow through ``rounding`` and
    the qparams. With an integer-valued ``rounding`` the result lies on the grid exactly as a
    round-to-nearest result would (same operations, same order after the rounding)."""
    xf = x.to(torch.promote_types(x.dtype, scale.dtype))
    levels = (rounding(xf * (1.0 / scale)) + zero_point).clamp(qmin, qmax)
    return ((levels - zero_point) * scale).to(x.dtype)


def check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in 2..16, got {bits!r}")
    return bits


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(allowed)}")
    return value
