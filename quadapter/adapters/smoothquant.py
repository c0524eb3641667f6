"""SmoothQuant (Xiao et al., ICML 2023): training-free per-channel scales from calibration ranges.

SmoothQuant divides activation channel j by s_j = max|X_j|^m / max|W_j|^(1-m) and multiplies the
weight's input row j by s_j (m: migration strength, 0.5 by default), moving quantization
difficulty from activation outliers to the weights. Our consumers compute ``Q(x·α) · Q(W/α)``
(``ChannelScale``), so SmoothQuant's scales are α = 1/s = max|W_j|^(1-m) / max|X_j|^m, which can
then be folded exactly like Quadapter's (or serve as Quadapter's initialization).
"""

from __future__ import annotations

from torch import Tensor


def weight_absmax(weight: Tensor, input_axis: int) -> Tensor:
    """max|W_j| over each input row/column j (``input_axis``: 0 for Conv1D, 1 for nn.Linear)."""
    other = [d for d in range(weight.dim()) if d != input_axis]
    return weight.detach().abs().amax(dim=other).float()


def smoothquant_alpha(act_absmax: Tensor, w_absmax: Tensor, migration: float = 0.5,
                      eps: float = 1e-5) -> Tensor:
    """α_j = 1/s_j = max|W_j|^(1-m) / max|X_j|^m, positive (ranges clamped at ``eps``)."""
    if not 0.0 <= migration <= 1.0:
        raise ValueError(f"adapter.migration={migration!r} is invalid: give a number in [0, 1]")
    if act_absmax.shape != w_absmax.shape:
        raise ValueError(f"activation ranges {tuple(act_absmax.shape)} and weight ranges "
                         f"{tuple(w_absmax.shape)} do not match channel for channel")
    x = act_absmax.detach().float().clamp_min(eps)
    w = w_absmax.detach().float().to(x.device).clamp_min(eps)
    return w.pow(1.0 - migration) / x.pow(migration)
