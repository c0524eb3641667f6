"""GPTQ (Frantar et al., ICLR 2023): weight-only quantization with second-order error feedback.

Round-to-nearest quantizes every weight on its own. GPTQ quantizes one input column at a time and
spreads the column's rounding error over the columns not yet quantized, weighted by the inverse of
the layer's input Hessian ``H = 2/n · Σ x xᵀ`` — the closed-form optimum (OBS) of the layer's
output error ``‖X Wᵀ − X Qᵀ‖²`` given the columns fixed so far. As in the paper it works from
the upper Cholesky factor of ``H⁻¹`` (numerically stable, no re-inversion per column), in blocks
of columns whose updates to the rest are applied lazily (one matmul per block), with
``damp · mean(diag H)`` added to the diagonal, and optionally in descending ``diag H`` order
(``act_order``).

The grid is the one ``FakeQuantizer`` (fixed ranges, per tensor, channel or group): per tensor
and per channel, ranges come from the weight before any update; per group, a group's range comes
from its columns as they are when GPTQ reaches the group (after the error feedback from earlier
columns, as the reference implementation) — with ``act_order``, from the original weight ("static
groups"), since the groups are then no longer reached in order. The quantizer's ranges are left
set to the ones used, so ``quantizer(Q) == Q``: the result lies exactly on the quantizer's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from quadapter.quant.functional import fake_quant_fixed
from quadapter.quant.quantizer import FakeQuantizer


@dataclass
class GPTQResult:
    weight: Tensor  # in the layer's layout, on the quantizer's grid
    proxy_loss: float  # Σ (w − q)² / [H⁻¹]ᵢᵢ over columns: GPTQ's own estimate of the output error
    dead_columns: int  # input channels never active in the calibration data (diag H = 0): quantized to 0


def _transposed(quantizer: FakeQuantizer) -> bool:
    """Whether the layer stores its weight as [in, out] (HF Conv1D: ranges along axis 1)."""
    return quantizer.granularity != "per_tensor" and quantizer.axis % 2 == 1


def _calibrate(quantizer: FakeQuantizer, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Set the quantizer's ranges from ``weight`` ([out, in]); its scale and zero point as
    [out, groups] (per tensor and per channel: one group)."""
    quantizer.calibrate()
    quantizer(weight.t() if _transposed(quantizer) else weight)
    quantizer.freeze()
    out = weight.shape[0]
    scale, zero_point = quantizer.scale, quantizer.zero_point
    if quantizer.granularity == "per_tensor":
        return scale.reshape(1, 1).expand(out, 1), zero_point.reshape(1, 1).expand(out, 1)
    return scale.reshape(out, -1), zero_point.reshape(out, -1)


def _check(quantizer: FakeQuantizer, weight: Tensor, hessian: Tensor) -> None:
    features = weight.shape[0 if _transposed(quantizer) else 1] if weight.dim() == 2 else -1
    if hessian.shape != (features, features):
        raise ValueError(f"gptq needs a 2-D weight and a Hessian [in, in] of its input features; got "
                         f"{tuple(weight.shape)} and {tuple(hessian.shape)}")
    if not isinstance(quantizer, FakeQuantizer) or quantizer.granularity == "per_token":
        raise ValueError("gptq quantizes weights with a FakeQuantizer per tensor, channel or group")
    if quantizer.parameterization != "none":
        raise ValueError("gptq sets fixed ranges; a learnable range (quantizer.weight.learnable) would "
                         "move the grid after GPTQ placed the weights on it: use learnable=none")


@torch.no_grad()
def gptq_quantize(weight: Tensor, hessian: Tensor, quantizer: FakeQuantizer, *, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = False) -> GPTQResult:
    """Quantize ``weight`` with GPTQ given its input Hessian [in, in] (any positive scale: ``Σ x xᵀ``
    works as well as ``2/n Σ x xᵀ``). The weight is in its layer's layout: [out, in] (nn.Linear,
    quantizer axis 0 or per tensor) or [in, out] (HF Conv1D, axis 1); so is the result. Leaves
    ``quantizer`` holding the ranges used."""
    _check(quantizer, weight, hessian)
    transposed = _transposed(quantizer)
    dtype = torch.promote_types(weight.dtype, torch.float32)  # float64 stays float64 (tests)
    W = (weight.t() if transposed else weight).detach().clone().to(dtype)
    n = W.shape[1]
    H = hessian.detach().clone().to(dtype)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    per_group = quantizer.granularity == "per_group"
    group = quantizer.group_size if per_group else n
    static = not per_group or act_order  # ranges from the weight before any update
    scale, zero_point = _calibrate(quantizer, W)
    scale, zero_point = scale.clone(), zero_point.clone()
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(n, dtype=H.dtype, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    if per_group and not static:
        block_size = max(block_size // group, 1) * group  # a group never straddles two blocks
    Q = torch.zeros_like(W)
    proxy = torch.zeros((), dtype=torch.float64)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        errors = torch.zeros_like(W1)
        for i in range(i2 - i1):
            column = int(perm[i1 + i])
            if not static and column % group == 0:  # a new group: its range from its current columns
                current = torch.cat([Q[:, :i1], W1, W[:, i2:]], dim=1)  # columns in original order
                s, z = _calibrate(quantizer, current)
                scale[:, column // group], zero_point[:, column // group] = s[:, column // group], z[:, column // group]
            g = column // group
            w, d = W1[:, i], U1[i, i]
            q = fake_quant_fixed(w.unsqueeze(1), scale[:, g], zero_point[:, g], quantizer.qmin,
                                 quantizer.qmax, axis=0).squeeze(1)
            Q[:, i1 + i] = q
            err = (w - q) / d
            proxy += ((w - q) ** 2 / d**2).sum().double()
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            errors[:, i] = err
        W[:, i2:] -= errors @ U[i1:i2, i2:]
    Q = Q[:, torch.argsort(perm)]
    _store(quantizer, scale, zero_point)
    return GPTQResult((Q.t() if transposed else Q).contiguous().to(weight.dtype), float(proxy), int(dead.sum()))


def _store(quantizer: FakeQuantizer, scale: Tensor, zero_point: Tensor) -> None:
    """Leave the ranges GPTQ used in the quantizer, in its own layout."""
    if quantizer.granularity == "per_tensor":
        quantizer.scale, quantizer.zero_point = scale[0, 0].clone(), zero_point[0, 0].clone()
    else:
        quantizer.scale, quantizer.zero_point = scale.reshape(-1).clone(), zero_point.reshape(-1).clone()
