"""Argument validation, modes, export and state loading of FakeQuantizer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quadapter.quant import FakeQuantizer, make_estimator


@pytest.mark.parametrize("bits", [0, 1, 17, 32, 8.0, "8", True, None])
def test_bad_bits_raise_naming_value_and_range(bits):
    with pytest.raises(ValueError, match=r"2\.\.16") as err:
        FakeQuantizer(bits=bits)
    assert repr(bits) in str(err.value)
    with pytest.raises(ValueError, match=r"2\.\.16"):
        make_estimator("mse", bits=bits, symmetric=False)


@pytest.mark.parametrize("kw,bad,valid", [
    ({"granularity": "per_row"}, "'per_row'", "per_tensor, per_channel, per_group, per_token"),
    ({"estimator": "max"}, "'max'", "minmax, running_minmax, percentile, mse"),
    ({"learnable": "lsq"}, "'lsq'", "none, scale_offset, min_max, beta_gamma"),
])
def test_unknown_choices_raise_listing_valid_ones(kw, bad, valid):
    with pytest.raises(ValueError) as err:
        FakeQuantizer(**kw)
    assert bad in str(err.value) and valid in str(err.value)


def test_unknown_estimator_name_in_factory():
    with pytest.raises(ValueError, match="'histogram'.*minmax, running_minmax, percentile, mse"):
        make_estimator("histogram")


@pytest.mark.parametrize("kw", [
    {"granularity": "per_channel"},  # no axis
    {"granularity": "per_tensor", "axis": 0},
    {"granularity": "per_token", "learnable": "min_max"},
    {"learnable": "min_max", "sigmoid": True},
    {"estimator": "percentile", "estimator_kw": {"percentile": 20.0}},
    {"estimator": "running_minmax", "estimator_kw": {"momentum": 0.0}},
])
def test_inconsistent_options_raise(kw):
    with pytest.raises(ValueError):
        FakeQuantizer(**kw)


def test_calibration_lifecycle():
    q = FakeQuantizer(4)
    x = torch.linspace(-1, 3, 9)
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(x)
    q.calibrate()
    assert q(x) is x  # observing only
    assert q(2 * x) is not None
    q.freeze()
    assert not q.calibrating
    assert torch.allclose(q.scale, torch.tensor(8.0 / 15))  # range of everything seen: [-2, 6]
    assert not torch.equal(q(x), x)
    q.calibrate()  # re-calibration starts from scratch
    q(x)
    q.freeze()
    assert torch.allclose(q.scale, torch.tensor(4.0 / 15))


def test_per_token_needs_no_calibration_and_keeps_no_state():
    q = FakeQuantizer(8, granularity="per_token")
    x = torch.randn(2, 3, 8, requires_grad=True)
    y = q(x)
    assert y.shape == x.shape and (y - x).abs().max() < 0.05
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # min-max per row never clips
    q.calibrate()
    assert q(x) is x
    q.freeze()
    assert q.state_dict()["scale"].numel() == 0
    assert q.encodings()["scale"] is None


@pytest.mark.parametrize("learnable", ["none", "scale_offset", "min_max", "beta_gamma"])
def test_encodings_are_json_lists(learnable):
    q = FakeQuantizer(4, granularity="per_channel", axis=1, learnable=learnable)
    q.set_range(torch.tensor([-1.0, 0.0, -0.5]), torch.tensor([2.0, 2.0, 1.0]))
    enc = json.loads(json.dumps(q.encodings()))
    assert enc == {
        "bits": 4, "symmetric": False, "granularity": "per_channel", "axis": 1, "group_size": None,
        "scale": pytest.approx([3 / 15, 2 / 15, 1.5 / 15]), "zero_point": [5, 0, 5],
    }
    per_tensor = FakeQuantizer(8, symmetric=True)
    per_tensor.set_range(-1.0, 0.5)
    enc = per_tensor.encodings()
    assert enc["scale"] == pytest.approx([1 / 127]) and enc["zero_point"] == [0]


def test_encodings_follow_learned_values():
    q = FakeQuantizer(8, learnable="min_max")
    q.set_range(-1.0, 1.0)
    with torch.no_grad():
        q.learned_range.theta_max.fill_(3.0)
    assert q.encodings()["scale"] == pytest.approx([4.0 / 255])


@pytest.mark.parametrize("learnable", ["none", "scale_offset", "min_max", "beta_gamma"])
@pytest.mark.parametrize("granularity,axis", [("per_tensor", None), ("per_channel", 1)])
def test_state_dict_loads_into_a_fresh_quantizer(learnable, granularity, axis):
    def make():
        return FakeQuantizer(6, granularity=granularity, axis=axis, learnable=learnable)

    q = make().calibrate()
    x = torch.randn(5, 4)
    q(x)
    q.freeze()
    with torch.no_grad():
        for p in q.range_parameters():
            p.mul_(0.9)
    fresh = make()
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))
    assert fresh.encodings() == q.encodings()


def test_range_parameters_and_parameterization():
    assert FakeQuantizer(8).range_parameters() == []
    assert FakeQuantizer(8).parameterization == "none"
    q = FakeQuantizer(8, granularity="per_channel", axis=0, learnable="beta_gamma")
    assert q.range_parameters() == []  # nothing to learn before calibration
    q.set_range(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]))
    params = q.range_parameters()
    assert q.parameterization == "beta_gamma" and len(params) == 2
    assert all(p.shape == (2,) and p.requires_grad for p in params)
    assert {id(p) for p in params} <= {id(p) for p in q.parameters()}


def test_extra_repr_names_the_configuration():
    q = FakeQuantizer(
        4, True, "per_channel", axis=1, estimator="mse", learnable="beta_gamma", sigmoid=True
    )
    text = repr(q.disable())
    for part in ("bits=4", "symmetric=True", "per_channel", "axis=1", "estimator=mse",
                 "learnable=beta_gamma", "sigmoid=True", "disabled"):
        assert part in text


@pytest.mark.parametrize("learnable", ["none", "min_max"])
def test_quantizer_survives_module_half(learnable):
    """model.half() casts the qparams too; forward keeps them fp32 for the kernels."""
    w = torch.randn(6, 4)
    q = FakeQuantizer(8, granularity="per_channel", axis=0, learnable=learnable).calibrate()
    q(w)
    q.freeze()
    y = q(w)
    q.half()
    y_half = q(w.half())
    assert y_half.dtype == torch.float16
    assert torch.allclose(y_half.float(), y, atol=2e-2)


def test_quant_core_does_not_import_transformers():
    code = "import sys, quadapter.quant; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
