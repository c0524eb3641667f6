"""Kronecker-factored linears (KnGPT2): the nearest-Kronecker-product initialization is exact for a
sum of Kronecker products and optimal otherwise (checked against numpy's SVD of the rearranged
matrix), and the reshape-and-matmul forward equals the materialized product (nn.Linear and Conv1D)."""

import numpy as np
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from quadapter.models.kronecker import KroneckerLinear, kron_sum, nearest_kronecker, rearrange


@pytest.mark.parametrize("rank", [1, 3])
def test_a_sum_of_kronecker_products_is_factored_exactly(rank):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(rank, 4, 6, generator=g, dtype=torch.float64), torch.randn(rank, 5, 3, generator=g, dtype=torch.float64)
    weight = kron_sum(a, b)
    fa, fb = nearest_kronecker(weight, (4, 6), (5, 3), rank)
    torch.testing.assert_close(kron_sum(fa, fb), weight, rtol=0, atol=1e-10)


def test_otherwise_it_is_the_best_rank_r_approximation():
    torch.manual_seed(0)
    weight = torch.randn(12, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for rank in (1, 2):
        fa, fb = nearest_kronecker(weight, (3, 4), (4, 5), rank)
        error = float(torch.linalg.norm(weight - kron_sum(fa, fb)))
        s = np.linalg.svd(rearrange(weight, (3, 4), (4, 5)).numpy(), compute_uv=False)
        assert error == pytest.approx(float(np.sqrt((s[rank:] ** 2).sum())), rel=1e-9)  # Eckart–Young
        for _ in range(20):  # and no perturbation of the factors does better
            pa, pb = fa + 1e-3 * torch.randn_like(fa), fb + 1e-3 * torch.randn_like(fb)
            assert float(torch.linalg.norm(weight - kron_sum(pa, pb))) >= error


def test_forward_equals_the_materialized_product_for_linear_and_conv1d_layouts():
    torch.manual_seed(2)
    linear = torch.nn.Linear(24, 12)
    k = KroneckerLinear.from_weight(linear.weight, linear.bias, (3, 4), (4, 6), rank=2)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(k(x), x @ k.weight().T + linear.bias, rtol=1e-5, atol=1e-5)
    conv = Conv1D(12, 24)  # HF GPT-2 layout: weight [in, out]
    torch.nn.init.normal_(conv.weight)
    kc = KroneckerLinear.from_weight(conv.weight.T, conv.bias, (3, 4), (4, 6), rank=1)
    torch.testing.assert_close(kc(x), x @ kc.weight().T + conv.bias, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in k.parameters()) == 2 * (3 * 4 + 4 * 6) + 12
    k(x).sum().backward()
    assert k.a.grad is not None and k.b.grad is not None


def test_shapes_that_do_not_fit_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="choose factor shapes whose products"):
        nearest_kronecker(torch.zeros(12, 20), (3, 4), (4, 4))
    with pytest.raises(ValueError, match="rank 13 must be in 1..12"):
        nearest_kronecker(torch.zeros(12, 20), (3, 4), (4, 5), rank=13)
