"""Quadapter channel scales: identity with quantizers off, exact folding with them on (and back
to the FP model once QuantSim is removed), gradients to α only, and no stale weight cache."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from quadapter.adapters import ChannelScale
from quadapter.models.arch import FAMILIES
from quadapter.models.regions import attach_scales, fold_scales
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim

W8 = QuantizerConfig(8, symmetric=True, granularity="per_channel")
A8 = QuantizerConfig(8)
W4 = QuantizerConfig(4, symmetric=False, granularity="per_channel")
VOCAB = 101


def odd_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=96, n_head=3, vocab_size=VOCAB, n_positions=32)
    return GPT2LMHeadModel(config).eval()


def batches(n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (2, 32), generator=gen) for _ in range(n)]


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def quantized(model, weight=W8, act=A8, calibrate=True) -> QuantSim:
    sim = QuantSim(model, *quant_sites(model, None), weight=weight, act=act)
    if calibrate:
        sim.calibrate(batches(), progress=False)
    return sim


def random_alpha(n: int, seed: int = 2) -> torch.Tensor:
    return torch.exp(0.5 * torch.randn(n, generator=torch.Generator().manual_seed(seed)))


def randomize(scales: dict[str, ChannelScale], seed: int = 3) -> None:
    with torch.no_grad():
        for i, scale in enumerate(scales.values()):
            scale.log_alpha.copy_(random_alpha(scale.log_alpha.numel(), seed + i).log())


ALL = tuple(FAMILIES["gpt2"].regions)


def test_alpha_one_with_quantizers_off_is_identity():
    model = odd_gpt2()
    ids = batches(1)[0]
    reference = logits(model, ids)
    sim = quantized(model)
    scales = attach_scales(sim, model, ALL)
    assert len(scales) == 6 and "transformer.h.0.ln1_qkv" in scales
    sim.disable()
    assert torch.equal(logits(model, ids), reference)


@pytest.mark.parametrize("linear", [False, True])
def test_random_alpha_with_quantizers_off_is_identity(linear):
    model = odd_gpt2()
    if linear:
        from test_quantsim import linearized  # nn.Linear weights: input axis 1
        model = linearized(model)
    ids = batches(1)[0]
    reference = logits(model, ids)
    sim = quantized(model)
    randomize(attach_scales(sim, model, ALL))
    sim.disable()
    torch.testing.assert_close(logits(model, ids), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("names, weight", [(("ln1_qkv",), W8), (("ln2_fc",), W8),
                                           (("v_proj",), W4), (ALL, W8), (ALL, W4)])
def test_fold_is_exact_with_quantizers_on(names, weight):
    model = odd_gpt2()
    ids = batches(1)[0]
    fp = logits(model, ids)
    sim = quantized(model, weight=weight)
    scales = attach_scales(sim, model, names)
    randomize(scales)
    sim.calibrate(batches(), progress=False)  # ranges for the scaled activations and W/α
    unfolded = logits(model, ids)
    assert not torch.allclose(unfolded, fp, atol=1e-3)  # quantization is really on

    fold_scales(sim, model, scales)
    assert not any(isinstance(m, ChannelScale) for m in model.modules())
    assert all(layer.input_scale is None for layer in sim.layers.values())
    atol = 1e-4 * unfolded.abs().max().item()
    torch.testing.assert_close(logits(model, ids), unfolded, atol=atol, rtol=0)

    sim.remove()  # the folded FP model is the original function
    torch.testing.assert_close(logits(model, ids), fp, atol=1e-4 * fp.abs().max().item(), rtol=0)


def test_gradients_reach_alpha_with_frozen_weights():
    model = odd_gpt2()
    model.requires_grad_(False)
    sim = quantized(model)
    scales = attach_scales(sim, model, ALL)
    model.train()
    ids = batches(1)[0]
    model(ids, labels=ids).loss.backward()
    for key, scale in scales.items():
        assert scale.log_alpha.grad is not None and scale.log_alpha.grad.abs().sum() > 0, key
    assert all(p.grad is None for n, p in model.named_parameters() if "log_alpha" not in n)


def test_weight_cache_follows_alpha():
    model = odd_gpt2()
    sim = quantized(model)
    scales = attach_scales(sim, model, ("ln2_fc",))
    ids = batches(1)[0]
    before = logits(model, ids)
    assert torch.equal(logits(model, ids), before)  # served from the cache
    layer = sim.layers["transformer.h.0.mlp.c_fc"]
    cached = layer._cached
    assert cached is not None
    with torch.no_grad():
        scales["transformer.h.0.ln2_fc"].log_alpha.add_(0.7)
    after = logits(model, ids)
    assert layer._cached is not cached and not torch.allclose(after, before)
    # the recomputed cache is what an uncached forward gives
    layer.cache_weight = False
    torch.testing.assert_close(logits(model, ids), after, atol=0, rtol=0)


def test_calibration_sees_scaled_weight_and_state_dict_keys():
    model = odd_gpt2()
    sim = quantized(model, calibrate=False)
    keys = set(model.state_dict())
    scales = attach_scales(sim, model, ("v_proj",), init=random_alpha(96))
    assert set(model.state_dict()) - keys == {f"transformer.h.{i}.attn.c_proj.input_scale.log_alpha"
                                              for i in range(2)}
    sim.calibrate(batches(), progress=False)
    layer = sim.layers["transformer.h.0.attn.c_proj"]
    w = layer.effective_weight().detach()
    q = layer.weight_quantizer
    assert torch.allclose(q.scale, w.abs().amax(dim=0) / 127, rtol=1e-5)  # Conv1D: out axis 1
    fold_scales(sim, model, scales)
    assert set(model.state_dict()) == keys


def test_errors():
    model = odd_gpt2()
    sim = quantized(model, calibrate=False)
    with pytest.raises(ValueError, match=r"'qkv'.*ln1_qkv, ln2_fc, v_proj"):
        attach_scales(sim, model, ("ln1_qkv", "qkv"))
    assert all(layer.input_scale is None for layer in sim.layers.values())
    with pytest.raises(ValueError, match="positive"):
        ChannelScale(3, torch.tensor([1.0, 0.0, 2.0]))
    fresh = odd_gpt2()
    partial = QuantSim(fresh, *quant_sites(fresh, ["mlp.c_fc"]), weight=W8, act=A8)
    with pytest.raises(ValueError, match="attn.c_attn.*not a QuantizedLayer"):
        attach_scales(partial, partial.model, ("ln1_qkv",))


def test_v_proj_refuses_per_tensor_weight_fold():
    model = odd_gpt2()
    sim = quantized(model, weight=QuantizerConfig(8))
    scales = attach_scales(sim, model, ("v_proj",), init=random_alpha(96))
    weight = model.transformer.h[0].attn.c_attn.layer.weight.clone()
    with pytest.raises(ValueError, match="per_channel"):
        fold_scales(sim, model, scales)
    assert torch.equal(model.transformer.h[0].attn.c_attn.layer.weight, weight)
