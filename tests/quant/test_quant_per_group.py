"""Per-group weight quantization: a range per ``group_size`` consecutive input channels of each
output channel, checked against torch's fused per-channel kernel applied group by group."""

import pytest
import torch
from torch import nn

from quadapter.quant import FakeQuantizer, QuantizerConfig, QuantSim, quant_range
from quadapter.quant.sim import LayerSite


def _reference(w_out_in: torch.Tensor, bits: int, symmetric: bool, group_size: int) -> torch.Tensor:
    """Each group quantized on its own min/max range by torch.fake_quantize_per_channel_affine."""
    qmin, qmax = quant_range(bits, symmetric)
    groups = w_out_in.reshape(-1, group_size)
    lo, hi = groups.amin(1), groups.amax(1)
    if symmetric:
        scale, zp = (torch.maximum(-lo, hi) / qmax).clamp_min(torch.finfo(torch.float32).eps), torch.zeros_like(lo)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(torch.finfo(torch.float32).eps)
        zp = torch.round(qmin - lo / scale).clamp(qmin, qmax)
    out = torch.fake_quantize_per_channel_affine(groups, scale, zp.int(), 0, qmin, qmax)
    return out.reshape(w_out_in.shape)


def _calibrated(w, **kw):
    q = FakeQuantizer(**kw)
    q.calibrate()
    q(w)
    q.freeze()
    return q


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (3, False), (8, True)])
@pytest.mark.parametrize("group_size", [8, 32])
@pytest.mark.parametrize("axis", [0, 1])  # nn.Linear [out, in]; HF Conv1D [in, out]
def test_per_group_equals_the_fused_kernel_group_by_group(bits, symmetric, group_size, axis):
    gen = torch.Generator().manual_seed(bits + group_size)
    w_out_in = torch.randn(24, 64, generator=gen) * torch.rand(24, 1, generator=gen) * 3
    w = w_out_in if axis == 0 else w_out_in.t().contiguous()
    q = _calibrated(w, bits=bits, symmetric=symmetric, granularity="per_group", axis=axis,
                    group_size=group_size)
    assert q.scale.shape == (24 * 64 // group_size,)
    out = q(w)
    expected = _reference(w_out_in, bits, symmetric, group_size)
    assert torch.equal(out if axis == 0 else out.t(), expected)
    assert out.shape == w.shape and out.is_contiguous()


def test_per_group_error_is_below_per_channel_and_group_size_in_channel_is_per_channel():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(32, 128, generator=gen) * torch.exp(torch.randn(1, 128, generator=gen))  # uneven columns
    errors = {}
    for g in (16, 32, 128):
        q = _calibrated(w, bits=4, symmetric=True, granularity="per_group", axis=0, group_size=g)
        errors[g] = (q(w) - w).pow(2).mean().item()
    per_channel = _calibrated(w, bits=4, symmetric=True, granularity="per_channel", axis=0)
    assert torch.equal(_calibrated(w, bits=4, symmetric=True, granularity="per_group", axis=0,
                                   group_size=128)(w), per_channel(w))  # one group per row
    assert errors[16] < errors[32] < errors[128]


@pytest.mark.parametrize("learnable", ["min_max", "scale_offset", "beta_gamma"])
def test_learnable_per_group_starts_equal_and_its_ranges_get_gradients(learnable):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(12, 48, generator=gen)
    fixed = _calibrated(w, bits=4, symmetric=False, granularity="per_group", axis=0, group_size=16)
    learned = _calibrated(w, bits=4, symmetric=False, granularity="per_group", axis=0, group_size=16,
                          learnable=learnable)
    assert torch.equal(learned(w), fixed(w))
    with torch.no_grad():  # narrow every range so that some weights clip: all range gradients live
        for p in learned.range_parameters():
            p.mul_(0.8)
    x = w.clone().requires_grad_()
    out = learned(x)
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    assert x.grad is not None
    for p in learned.range_parameters():
        assert p.shape == (12 * 3,) and p.grad is not None and p.grad.abs().sum() > 0


def test_group_size_must_divide_the_input_dimension_and_goes_with_per_group():
    q = FakeQuantizer(4, granularity="per_group", axis=0, group_size=32)
    q.calibrate()
    with pytest.raises(ValueError, match=r"group_size 32 does not divide the input dimension 48 of a "
                                         r"weight of shape \(8, 48\); choose a group_size that divides it"):
        q(torch.randn(8, 48))
    with pytest.raises(ValueError, match="group_size is for per_group only"):
        FakeQuantizer(4, granularity="per_channel", axis=0, group_size=32)
    with pytest.raises(ValueError, match="group_size is for per_group only and required there"):
        FakeQuantizer(4, granularity="per_group", axis=0)
    with pytest.raises(ValueError, match="positive integer"):
        FakeQuantizer(4, granularity="per_group", axis=0, group_size=0)


def test_state_dict_encodings_and_quantsim():
    gen = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    sim = QuantSim(model, [LayerSite("0", 0), LayerSite("2", 0)],
                   weight=QuantizerConfig(4, True, "per_group", group_size=16), act=QuantizerConfig(8))
    x = torch.randn(5, 64, generator=gen)
    sim.calibrate([x], progress=False)
    enc = sim.weight_quantizers()["0.weight"].encodings()
    assert enc["granularity"] == "per_group" and enc["group_size"] == 16 and len(enc["scale"]) == 32 * 4
    fresh = FakeQuantizer(4, True, "per_group", axis=0, group_size=16)
    fresh.load_state_dict(sim.weight_quantizers()["0.weight"].state_dict())
    w = model[0].layer.weight
    assert torch.equal(fresh(w), sim.weight_quantizers()["0.weight"](w))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (5, 16) and torch.isfinite(y).all()


def test_scales_fold_exactly_into_per_group_producers_and_consumers():
    """Llama's v_proj -> o_proj and up_proj -> down_proj with per-group weights: folding α (powers
    of two) scales each output row's group ranges with it, so the folded model is bit-identical."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quadapter.models.arch import for_model
    from quadapter.models.regions import attach_scales, fold_scales
    from quadapter.models.sites import quant_sites

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=64, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, max_position_embeddings=32)).eval()
    ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))
    sim = QuantSim(model, *quant_sites(model, None),
                   weight=QuantizerConfig(4, False, "per_group", group_size=16), act=QuantizerConfig(8))
    scales = attach_scales(sim, model, list(for_model(model).regions))
    with torch.no_grad():
        for i, s in enumerate(scales.values()):
            gen = torch.Generator().manual_seed(i)
            s.log_alpha.copy_(torch.randint(-2, 3, s.log_alpha.shape, generator=gen) * torch.log(torch.tensor(2.0)))
    sim.calibrate([ids], progress=False)
    with torch.no_grad():
        unfolded = model(ids).logits
        fold_scales(sim, model, scales)
        assert torch.equal(model(ids).logits, unfolded)
