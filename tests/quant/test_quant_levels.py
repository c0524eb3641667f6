"""Ternary and binary weight quantizers: the formulas on hand-made tensors, the straight-through
gradient, the QuantSim path, exact folding of per-channel scales, the storage they are credited
with, and the configs that make no sense refused in one line."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from quadapter.errors import ConfigError
from quadapter.quant import LevelQuantizer, QuantizerConfig, QuantSim, binarize, ternarize
from quadapter.quant.sim import LayerSite
from quadapter.quant.size import model_size

W = torch.tensor([[0.1, -0.9, 0.5, 0.0],
                  [2.0, -2.0, 0.1, -0.1]])


def test_ternary_values_per_channel_and_per_tensor():
    # row 0: mean|w| = 0.375, Δ = 0.2625 keeps -0.9 and 0.5, α = 0.7; row 1: Δ = 0.735, α = 2
    values, alpha = ternarize(W, axis=0)
    assert torch.allclose(values, torch.tensor([[0, -0.7, 0.7, 0], [2, -2, 0, 0]]))
    assert torch.allclose(alpha, torch.tensor([0.7, 2.0]))
    # per tensor: mean|w| = 0.7125, Δ = 0.49875 keeps ±0.9, 0.5, ±2: α = 5.4 / 4 = 1.35
    values, alpha = ternarize(W)
    assert torch.allclose(values, torch.tensor([[0, -1.35, 1.35, 0], [1.35, -1.35, 0, 0]]))
    assert alpha.shape == (1,) and torch.allclose(alpha, torch.tensor([1.35]))
    values, _ = ternarize(W, axis=0, threshold=0.0)  # Δ = 0: every nonzero weight kept
    assert torch.equal(values[0] == 0, torch.tensor([False, False, False, True]))


def test_binary_values_have_two_levels_with_sign_of_zero_positive():
    values, alpha = binarize(W, axis=0)
    assert torch.allclose(alpha, torch.tensor([0.375, 1.05]))
    assert torch.allclose(values, torch.tensor([[0.375, -0.375, 0.375, 0.375], [1.05, -1.05, 1.05, -1.05]]))
    values, alpha = binarize(W)
    assert torch.allclose(values.abs(), torch.full_like(W, 0.7125))


@pytest.mark.parametrize("levels", ["ternary", "binary"])
def test_output_axis_one_is_the_transpose_of_axis_zero(levels):
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    q0, q1 = LevelQuantizer(levels, "per_channel", 0), LevelQuantizer(levels, "per_channel", 1)
    assert torch.equal(q1(w.t().contiguous()), q0(w).t())  # HF Conv1D stores [in, out]


@pytest.mark.parametrize("levels", ["ternary", "binary"])
def test_gradient_is_straight_through(levels):
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    upstream = torch.randn(5, 7, generator=torch.Generator().manual_seed(2))
    q = LevelQuantizer(levels, "per_channel", 0)
    out = q(w)
    assert torch.equal(out, q.quantize(w.detach())[0])
    (out * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # ∂ŵ/∂w = 1 everywhere, α and Δ constants


@pytest.mark.parametrize("levels", ["ternary", "binary"])
def test_power_of_two_output_scales_fold_exactly(levels):
    """Q(diag(a)·W) = diag(a)·Q(W) per channel: a scale region may end in such a producer."""
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    a = 2.0 ** torch.randint(-3, 4, (8, 1), generator=torch.Generator().manual_seed(4)).float()
    q = LevelQuantizer(levels, "per_channel", 0)
    assert torch.equal(q(a * w), a * q(w))


@pytest.mark.parametrize("levels", ["ternary", "binary"])
def test_quantsim_runs_the_layer_on_the_quantized_weight(levels):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(3, 12)
    expected_weight = (ternarize if levels == "ternary" else binarize)(model[0].weight.detach(), axis=0)[0]
    expected = F.linear(x, expected_weight, model[0].bias)
    sim = QuantSim(model, [LayerSite("0", 0), LayerSite("2", 0)],
                   weight=QuantizerConfig(levels, True, "per_channel"))
    sim.calibrate([], progress=False)  # nothing to observe: α comes from the weight
    hidden = {}
    model[0].register_forward_hook(lambda m, i, o: hidden.setdefault("out", o))
    model.eval()
    with torch.no_grad():
        model(x)
        model(x)  # the eval cache serves the second call
    assert torch.equal(hidden["out"], expected)
    assert sim.weight_quantizers()["0.weight"].encodings()["bits"] == levels
    sim.remove()
    assert isinstance(model[0], nn.Linear)


def test_bad_quantizer_arguments_raise_one_line():
    with pytest.raises(ValueError, match="take granularity per_tensor or per_channel, not 'per_group'"):
        LevelQuantizer("binary", "per_group", 0)
    with pytest.raises(ValueError, match="unknown levels 'quaternary'"):
        LevelQuantizer("quaternary")
    with pytest.raises(ValueError, match="threshold must be a number >= 0"):
        LevelQuantizer("ternary", "per_tensor", threshold=float("nan"))


def test_model_size_counts_grid_bits_scales_and_full_precision_rest():
    torch.manual_seed(0)
    model = nn.ModuleDict({"emb": nn.Embedding(10, 8), "fc": nn.Linear(8, 6), "head": nn.Linear(6, 2)})
    fc = LayerSite("fc", 0)
    fp_rest = 32 * (10 * 8 + 6 + 6 * 2 + 2)  # embedding, fc bias, head weight and bias
    cases = [  # (weight config, bits of fc.weight: grid + scales + zero points)
        (QuantizerConfig("binary", True, "per_channel"), 1 * 48 + 32 * 6),
        (QuantizerConfig("ternary", True, "per_tensor"), 2 * 48 + 32),
        (QuantizerConfig(4, True, "per_channel"), 4 * 48 + 32 * 6),
        (QuantizerConfig(4, False, "per_group", group_size=4), 4 * 48 + (32 + 4) * 12),
    ]
    for config, fc_bits in cases:
        sim = QuantSim(model, [fc], weight=config)
        size = model_size(model, sim)
        sim.remove()
        assert size["bits"] == fp_rest + fc_bits, config
        assert size["fp32_bits"] == 32 * sum(p.numel() for p in model.parameters())
        assert size["compression"] == size["fp32_bits"] / size["bits"]
        assert size["quantized_params"] == 48 and size["bits_per_quantized_weight"] == fc_bits / 48


def _settings(bits: str, **quantizer):
    from quadapter.methods.quant_config import quant_settings

    q = {"name": "x", "estimator": "minmax", "estimator_kw": {}, "learnable": "none", "sigmoid": False,
         "weight": {"granularity": "per_channel", "symmetric": True, "group_size": None,
                    "ternary_threshold": 0.7},
         "act": {"granularity": "per_tensor", "symmetric": False},
         "calibration": {"split": "train", "blocks": 1, "batch_size": 1, "outlier_top_channels": 1},
         "sites": None}
    cfg = OmegaConf.create({"bits": {"name": "b", "weight": bits, "act": None},
                            "quantizer": q, "model": {"arch": "bert"}})
    for key, value in quantizer.items():
        OmegaConf.update(cfg, f"quantizer.{key}", value)
    return quant_settings(cfg, "ptq")


def test_quant_settings_build_levels_and_refuse_what_makes_no_sense():
    s = _settings("ternary", **{"weight.ternary_threshold": 0.5})
    assert (s.weight.bits, s.weight.threshold, s.weight.granularity) == ("ternary", 0.5, "per_channel")
    assert isinstance(s.weight.build(0), LevelQuantizer)
    with pytest.raises(ConfigError, match="bits.weight=binary takes its scale from the weights"):
        _settings("binary", learnable="min_max")
    with pytest.raises(ConfigError, match="quantizer.weight.granularity='per_group' is invalid: expected "
                                          "per_tensor or per_channel with bits.weight=ternary"):
        _settings("ternary", **{"weight.granularity": "per_group"})
