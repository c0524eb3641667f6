"""Activation-outlier statistics: the numbers mean what their names say."""

import json

import pytest
import torch

from quadapter.quant import OutlierStats


def test_outlier_channel_is_found_and_its_ratio_measured():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 50, 16, generator=gen) * 2 - 1  # |x| <= 1 everywhere ...
    x[..., 11] *= 40  # ... but one channel is 40x wider
    x[0, 0, 3], x[1, 0, 7] = 1.0, -1.0  # channel absmax of the flat ones: ~1
    stats = OutlierStats()
    for batch in x.split(1):  # streaming over batches == one pass over everything
        stats.observe(batch)
    s = stats.summary(top_k=3)
    assert s["channels"] == 16 and s["top_channels"][0] == 11
    assert s["absmax"] == pytest.approx(x[..., 11].abs().max().item())
    assert s["max_over_median"] == pytest.approx(s["absmax"] / s["median_absmax"])
    assert 30 < s["max_over_median"] < 41 and s["kurtosis"] > 10
    json.dumps(s)


@pytest.mark.parametrize("shift", [0.0, 1e4])
def test_kurtosis_of_a_gaussian_is_three_whatever_its_mean(shift):
    x = torch.randn(200, 1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = OutlierStats()
    for batch in (x + shift).float().split(50):
        stats.observe(batch)
    assert stats.kurtosis() == pytest.approx(3.0, abs=0.05)


def test_summary_before_observing_is_an_error():
    with pytest.raises(RuntimeError, match="before any observe"):
        OutlierStats().summary()
