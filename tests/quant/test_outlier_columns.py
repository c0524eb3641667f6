"""PreQuant's full-precision outlier columns over a frozen quantized weight."""

import torch
from torch import nn

from quadapter.quant import QuantizerConfig
from quadapter.quant.outlier_columns import attach_outlier_columns, top_columns


def test_weight_is_quantized_except_the_columns_and_only_they_train():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    original = layer.weight.detach().clone()
    q = QuantizerConfig(4, True, "per_channel").build(axis=0)
    q.calibrate()
    q(layer.weight)
    q.freeze()
    quantized = q(layer.weight).detach()
    columns = top_columns(original.norm(dim=0), 3)
    assert torch.equal(columns, original.norm(dim=0).argsort(descending=True)[:3].sort().values)
    part = attach_outlier_columns(layer, quantized, columns, input_axis=1)
    others = [i for i in range(12) if i not in columns.tolist()]
    assert torch.equal(layer.weight[:, columns], original[:, columns])
    assert torch.equal(layer.weight[:, others], quantized[:, others])
    x = torch.randn(7, 12)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)
    opt = torch.optim.SGD([part.values], lr=0.1)
    layer(x).pow(2).sum().backward()
    opt.step()
    assert torch.equal(layer.weight[:, others], quantized[:, others])  # the quantized part is frozen
    assert not torch.equal(layer.weight[:, columns], original[:, columns])
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == [
        "bias", "parametrizations.weight.0.values"]


def test_conv1d_layout_uses_axis_zero():
    weight = torch.randn(6, 4)  # [in, out]
    layer = nn.Module()
    layer.weight = nn.Parameter(weight.clone())
    attach_outlier_columns(layer, torch.zeros_like(weight), torch.tensor([1, 4]), input_axis=0)
    assert torch.equal(layer.weight[[1, 4]], weight[[1, 4]])
    assert layer.weight[[0, 2, 3, 5]].abs().sum() == 0
