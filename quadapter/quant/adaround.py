"""AdaRound (Nagel et al., ICML 2020): learn for every weight whether it rounds down or up.

Round-to-nearest is optimal per weight but not for the layer's (or block's) output. AdaRound
keeps ``floor(w/s)`` and learns an offset ``h(V) ∈ [0, 1]`` per weight, the rectified sigmoid
``h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)`` with ζ = 1.1, γ = −0.1; a regulariser
``Σ 1 − |2h(V) − 1|^β`` with β annealed from large to small pushes every offset to 0 or 1, and
at the end the offset is hardened to ``V ≥ 0``. V starts where ``h(V)`` equals the fractional
part of ``w/s``, so the soft weight starts as the FP weight and the hardened one as
round-to-nearest (ties up).

Used through ``FakeQuantizer.set_rounding``: the quantizer applies zero point, clamp and scale
around it, per tensor, channel or group, with fixed or learnable ranges.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from quadapter.quant.quantizer import FakeQuantizer

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound's values)


class AdaRound(nn.Module):
    """A learned rounding of a fixed tensor's grid coordinates ``w·(1/s)`` (shape fixed at init)."""

    def __init__(self, coordinates: Tensor) -> None:
        super().__init__()
        rest = (coordinates - torch.floor(coordinates)).detach().float()
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.register_buffer("hard", torch.zeros((), dtype=torch.bool))  # a buffer: flipping it changes its version

    def offsets(self) -> Tensor:
        """``h(V)``: in [0, 1] while learning; exactly 0 or 1 once hardened."""
        if self.hard:
            return (self.v >= 0).to(self.v.dtype)
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, coordinates: Tensor) -> Tensor:
        if coordinates.shape != self.v.shape:
            raise ValueError(f"AdaRound was built for coordinates of shape {tuple(self.v.shape)}, got "
                             f"{tuple(coordinates.shape)}")
        return torch.floor(coordinates) + self.offsets().to(coordinates.dtype)

    def regularizer(self, beta: float) -> Tensor:
        """``Σ 1 − |2h(V) − 1|^β``: zero when every offset is 0 or 1."""
        return (1 - (2 * self.offsets() - 1).abs().pow(beta)).sum()

    @torch.no_grad()
    def harden(self, hard: bool = True) -> None:
        self.hard.fill_(hard)


def attach(quantizer: FakeQuantizer, weight: Tensor) -> AdaRound:
    """Make ``quantizer`` round ``weight`` (as it is now, with its current ranges) with AdaRound."""
    rounding = AdaRound(quantizer.grid_coordinates(weight.detach())).to(weight.device)
    quantizer.set_rounding(rounding)
    return rounding


def beta_at(progress: float, start: float, end: float, warmup: float) -> float | None:
    """β at a share ``progress`` of the steps: none (no regulariser) during the first ``warmup``
    share, then falling linearly from ``start`` to ``end`` (AdaRound's temperature decay)."""
    if progress < warmup:
        return None
    return end + (start - end) * max(0.0, 1 - (progress - warmup) / (1 - warmup))
