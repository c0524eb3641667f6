"""Activation-outlier statistics of a quantizer's input, gathered while it calibrates.

Outlier channels are what make activation quantization of transformers hard (and what Quadapter
and SmoothQuant rescale): a few channels with a far larger range than the rest force a coarse
per-tensor grid. Two numbers say how bad a site is: the largest channel absmax over the median
channel's (1 for a flat profile) and the kurtosis of all values (3 for a Gaussian, hundreds or
more with outliers; Bondarenko et al. 2023, "Quantizable Transformers").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class OutlierStats:
    """Per-channel absmax and the kurtosis of all values, over every tensor observed.

    Channels are the last dim (the feature dim of a linear layer's input). Moments accumulate in
    float64 around the first batch's mean, so the kurtosis does not cancel catastrophically when
    the mean is large against the spread.
    """

    def __init__(self) -> None:
        self.absmax: Tensor | None = None
        self.shift: Tensor | None = None
        self.count = 0
        self.sums = torch.zeros(4, dtype=torch.float64)  # Σd, Σd², Σd³, Σd⁴ with d = x - shift

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1])
        absmax = rows.abs().amax(0).float()
        self.absmax = absmax if self.absmax is None else torch.maximum(self.absmax, absmax)
        d = rows.double()
        if self.shift is None:
            self.shift = d.mean()
        d = d - self.shift
        d2 = d * d
        sums = torch.stack([d.sum(), d2.sum(), (d2 * d).sum(), (d2 * d2).sum()])
        self.sums += sums.cpu()
        self.count += d.numel()

    def kurtosis(self) -> float:
        """Fourth standardized moment (Pearson, not excess: 3 for a Gaussian); nan if constant."""
        n = self.count
        m1, m2, m3, m4 = (s / n for s in self.sums.tolist())
        var = m2 - m1 * m1
        if var <= 0:
            return float("nan")
        c4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4
        return c4 / (var * var)

    def summary(self, top_k: int = 5) -> dict[str, Any]:
        """JSON-ready: absmax, median channel absmax, their ratio, kurtosis, the top channels."""
        if self.absmax is None:
            raise RuntimeError("OutlierStats.summary() before any observe()")
        absmax = self.absmax.cpu()
        median = absmax.median().item()
        top = absmax.topk(min(top_k, absmax.numel()))
        return {
            "channels": absmax.numel(),
            "absmax": top.values[0].item(),
            "median_absmax": median,
            "max_over_median": top.values[0].item() / median if median > 0 else float("inf"),
            "kurtosis": self.kurtosis(),
            "top_channels": top.indices.tolist(),
        }
