"""Ternary and binary weight quantizers: a handful of levels scaled by a statistic of the weight.

Ternary (TWN, Li et al. 2016; TernaryBERT): ``Δ = t·mean|W|``, ``ŵ = α·sign(w)`` where
``|w| > Δ`` and 0 elsewhere, ``α`` the mean ``|w|`` of the weights kept. Binary (BWN, Rastegari
et al. 2016; BinaryBERT): ``ŵ = α·sign(w)`` with ``α = mean|W|`` (``sign(0) = +1``: two levels).
The statistics are taken per tensor or per output channel, from the weight itself on every
forward: there is no range to calibrate, store or learn, so a progressive schedule re-derives
them from the weights each stage starts from. The backward pass is the straight-through estimator
of TernaryBERT/BinaryBERT: ``∂ŵ/∂w = 1`` (``α`` and ``Δ`` are treated as constants).

``LevelQuantizer`` has ``FakeQuantizer``'s interface (enable, calibrate, freeze, encodings, ...)
so that QuantSim and the methods use either without knowing which.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

LEVELS = ("ternary", "binary")  # bits.weight names beside the integer bit-widths
# Bits one weight takes when stored: a ternary weight as a 2-bit code (log2(3) = 1.58 is the
# entropy bound, reached only by packing five trits per byte), a binary one as a sign bit.
STORAGE_BITS = {"ternary": 2, "binary": 1}
LEVEL_GRANULARITIES = ("per_tensor", "per_channel")
TWN_THRESHOLD = 0.7  # Δ = 0.7·mean|W|: TWN's approximation of the optimum for Gaussian weights


def _rows(w: Tensor, axis: int | None) -> Tensor:
    """``w`` as contiguous [channels, rest] (one row per output channel), or [1, all] per tensor:
    the same reduction order, so the same α to the bit, whichever axis holds the channels."""
    if axis is None:
        return w.reshape(1, -1)
    return w.movedim(axis, 0).contiguous().reshape(w.shape[axis], -1)


def _from_rows(rows: Tensor, like: Tensor, axis: int | None) -> Tensor:
    if axis is None:
        return rows.reshape(like.shape)
    moved = list(like.shape)
    moved.insert(0, moved.pop(axis))
    return rows.reshape(moved).movedim(0, axis)


@torch.no_grad()
def ternarize(w: Tensor, axis: int | None = None, threshold: float = TWN_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(ŵ, α): TWN ternary values of ``w`` and the scale of each row (per tensor: one)."""
    rows = _rows(w, axis)
    mag = rows.abs()
    kept = mag > threshold * mag.mean(dim=1, keepdim=True)
    count = kept.sum(dim=1, keepdim=True)
    alpha = torch.where(kept, mag, 0).sum(dim=1, keepdim=True) / count.clamp_min(1)
    values = torch.where(kept, torch.where(rows > 0, alpha, -alpha), 0)
    return _from_rows(values, w, axis), alpha.reshape(-1)


@torch.no_grad()
def binarize(w: Tensor, axis: int | None = None) -> tuple[Tensor, Tensor]:
    """(ŵ, α): ``α·sign(w)`` with ``α = mean|w|`` per row (per tensor: one); ``sign(0) = +1``."""
    rows = _rows(w, axis)
    alpha = rows.abs().mean(dim=1, keepdim=True)
    values = torch.where(rows >= 0, alpha, -alpha)
    return _from_rows(values, w, axis), alpha.reshape(-1)


class _StraightThrough(torch.autograd.Function):
    """Forward: the given quantized values; backward: the gradient unchanged (∂ŵ/∂w = 1)."""

    @staticmethod
    def forward(ctx, w: Tensor, quantized: Tensor) -> Tensor:
        return quantized

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class LevelQuantizer(nn.Module):
    """Ternary or binary fake quantization of a weight, with the straight-through gradient.

    Args:
        levels: ``ternary`` or ``binary``.
        granularity: ``per_tensor`` or ``per_channel`` (one α, and for ternary one Δ, per output
            channel; needs ``axis``: 0 for an nn.Linear weight [out, in], 1 for HF Conv1D).
        threshold: ternary only: ``Δ = threshold·mean|W|`` (TWN's 0.7).
    """

    def __init__(self, levels: str, granularity: str = "per_channel", axis: int | None = None,
                 threshold: float = TWN_THRESHOLD) -> None:
        super().__init__()
        if levels not in LEVELS:
            raise ValueError(f"unknown levels {levels!r}; valid: {', '.join(LEVELS)}")
        if granularity not in LEVEL_GRANULARITIES:
            raise ValueError(f"{levels} weights take granularity per_tensor or per_channel, not "
                             f"{granularity!r}")
        if (granularity == "per_channel") != (axis is not None):
            raise ValueError(f"axis is for per_channel only and required there; got {axis!r}")
        if not threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        self.bits, self.granularity, self.axis, self.threshold = levels, granularity, axis, threshold
        self.storage_bits = STORAGE_BITS[levels]
        self.parameterization = "none"  # nothing learned: α and Δ follow the weight
        self.enabled, self.calibrating = True, False

    def enable(self, enabled: bool = True) -> "LevelQuantizer":
        self.enabled = enabled
        return self

    def disable(self) -> "LevelQuantizer":
        return self.enable(False)

    def calibrate(self, calibrating: bool = True) -> "LevelQuantizer":
        """No range to observe (forward returns its input meanwhile, as a FakeQuantizer's does)."""
        self.calibrating = calibrating
        return self

    def freeze(self) -> "LevelQuantizer":
        self.calibrating = False
        return self

    def range_parameters(self) -> list[nn.Parameter]:
        return []

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """(ŵ, α) without the autograd link: the values a deployed model stores."""
        axis = None if self.axis is None else self.axis % w.dim()
        if self.bits == "ternary":
            return ternarize(w, axis, self.threshold)
        return binarize(w, axis)

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled or self.calibrating:
            return w
        return _StraightThrough.apply(w, self.quantize(w)[0])

    def encodings(self) -> dict[str, Any]:
        """JSON-ready description; α is not stored: it is recomputed from the weight."""
        return {"bits": self.bits, "symmetric": True, "granularity": self.granularity,
                "axis": self.axis, "group_size": None, "scale": None, "zero_point": None,
                "threshold": self.threshold if self.bits == "ternary" else None}

    def extra_repr(self) -> str:
        parts = [self.bits, f"granularity={self.granularity}"]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self.bits == "ternary":
            parts.append(f"threshold={self.threshold}")
        if not self.enabled:
            parts.append("disabled")
        return ", ".join(parts)
