"""Full-precision outlier columns over a frozen quantized weight (PreQuant's trainable part).

PreQuant (Gong et al., Findings of ACL 2023) quantizes every weight of a pretrained LM once, then
fine-tunes only a small outlier-aware set of full-precision parameters. Here that set is, per weight
matrix, a few input channels (columns): ``W_eff = Q(W)`` with the chosen columns replaced by
trainable full-precision values (initialised to the original ``W``'s columns). It is a
``torch.nn.utils.parametrize`` parametrization of the layer's ``weight``: the quantized matrix is
the frozen original, the columns a parameter, and every forward (and ``layer.weight``) sees
their combination, so the wrapping ``QuantizedLayer`` needs no change.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


class OutlierColumns(nn.Module):
    """``weight`` with the input channels ``columns`` (along ``input_axis``) replaced by
    ``values``, a trainable full-precision slice."""

    def __init__(self, initial: Tensor, columns: Tensor, input_axis: int):
        super().__init__()
        self.input_axis = input_axis
        self.register_buffer("columns", columns.to(torch.long))
        self.values = nn.Parameter(initial.index_select(input_axis, self.columns).detach().clone())

    def forward(self, weight: Tensor) -> Tensor:
        return weight.index_copy(self.input_axis, self.columns, self.values)


def attach_outlier_columns(layer: nn.Module, quantized: Tensor, columns: Tensor,
                           input_axis: int) -> OutlierColumns:
    """Freeze ``layer.weight`` to ``quantized`` (its fake-quantized values) and make ``columns``
    trainable full-precision copies of the original weight's. Returns the parametrization."""
    original = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.copy_(quantized)
    layer.weight.requires_grad_(False)
    columns_module = OutlierColumns(original, columns, input_axis)
    parametrize.register_parametrization(layer, "weight", columns_module, unsafe=True)
    return columns_module


def top_columns(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest per-column scores, ascending."""
    return torch.topk(scores, k).indices.sort().values
