"""Learnable quantization ranges in the three parameterizations of You, Park, et al. (2024),
"How to Parameterize Asymmetric Quantization Ranges for QAT".

Each module is built from a calibrated range and, called with the number of input elements each
scale covers, returns ``(scale, zero_point)`` (broadcastable, zero point integer-valued) with
gradients into its parameters. Right after construction it reproduces the fixed-range qparams
exactly. Symmetric grids have no zero point, so only the scale/max side is learned there.
"""

import torch
from torch import Tensor, nn

from quadapter.quant.functional import EPS, grad_scale, qparams_from_range, round_ste


class RangeParameterization(nn.Module):
    """Base: subclasses define ``forward(numel_per_scale) -> (scale, zero_point)``."""

    parameterization: str

    def __init__(self, qmin: int, qmax: int, symmetric: bool) -> None:
        super().__init__()
        self.qmin, self.qmax, self.symmetric = qmin, qmax, symmetric

    def _qparams(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        return qparams_from_range(lo, hi, self.qmin, self.qmax, self.symmetric)


class ScaleOffsetRange(RangeParameterization):
    """Learn s and a real-valued zero point (rounded with STE); LSQ+ gradient scaling on both.

    The gradient scale ``1/sqrt(numel_per_scale * qmax)`` keeps the step size of s comparable
    to that of the weights; without it, s moves far too fast.
    """

    parameterization = "scale_offset"

    def __init__(self, lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool) -> None:
        super().__init__(qmin, qmax, symmetric)
        scale, zero_point = self._qparams(lo, hi)
        self.scale = nn.Parameter(scale)
        self.offset = None if symmetric else nn.Parameter(zero_point)

    def forward(self, numel_per_scale: int) -> tuple[Tensor, Tensor]:
        g = (numel_per_scale * self.qmax) ** -0.5
        scale = grad_scale(self.scale, g).clamp_min(EPS)
        if self.offset is None:
            return scale, torch.zeros_like(scale)
        return scale, round_ste(grad_scale(self.offset, g)).clamp(self.qmin, self.qmax)


class MinMaxRange(RangeParameterization):
    """Learn the range ends θmin, θmax (symmetric: θmax = max|x| only); s and z are derived."""

    parameterization = "min_max"

    def __init__(self, lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool) -> None:
        super().__init__(qmin, qmax, symmetric)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        self.theta_max = nn.Parameter(torch.maximum(-lo, hi) if symmetric else hi)
        self.theta_min = None if symmetric else nn.Parameter(lo)

    def forward(self, numel_per_scale: int) -> tuple[Tensor, Tensor]:
        lo = -self.theta_max if self.theta_min is None else self.theta_min
        return self._qparams(lo, self.theta_max)


class BetaGammaRange(RangeParameterization):
    """Learn factors of the calibrated range: θmax = γ·max₀, θmin = β·min₀ (init γ = β = 1).

    Scale-free parameters make one learning rate fit every layer. With ``sigmoid`` the factor is
    ``2·sigmoid(raw)`` (raw init 0), which bounds it to (0, 2).
    """

    parameterization = "beta_gamma"

    def __init__(
        self, lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool, sigmoid: bool = False
    ) -> None:
        super().__init__(qmin, qmax, symmetric)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        if symmetric:
            hi = torch.maximum(-lo, hi)
        self.sigmoid = sigmoid
        self.register_buffer("max0", hi.clone())
        self.register_buffer("min0", None if symmetric else lo.clone())
        init = 0.0 if sigmoid else 1.0
        self.gamma = nn.Parameter(torch.full_like(hi, init))
        self.beta = None if symmetric else nn.Parameter(torch.full_like(lo, init))

    def _factor(self, raw: Tensor) -> Tensor:
        return 2 * torch.sigmoid(raw) if self.sigmoid else raw

    def forward(self, numel_per_scale: int) -> tuple[Tensor, Tensor]:
        hi = self._factor(self.gamma) * self.max0
        lo = -hi if self.beta is None else self._factor(self.beta) * self.min0
        return self._qparams(lo, hi)

    def extra_repr(self) -> str:
        return f"sigmoid={self.sigmoid}"


PARAMETERIZATIONS: dict[str, type[RangeParameterization]] = {
    cls.parameterization: cls for cls in (ScaleOffsetRange, MinMaxRange, BetaGammaRange)
}


def make_parameterization(
    name: str, lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool, sigmoid: bool = False
) -> RangeParameterization:
    """Build a learnable range by name, initialized from the calibrated range ``[lo, hi]``."""
    kw = {"sigmoid": sigmoid} if name == "beta_gamma" else {}
    return PARAMETERIZATIONS[name](lo, hi, qmin, qmax, symmetric, **kw)
