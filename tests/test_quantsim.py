"""QuantSim on GPT-2: every targeted layer is wrapped (Conv1D and nn.Linear), the numerics match
torch's fused ops, removal is exact, and the fake-quantized weight cache never goes stale."""

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from quadapter.models.arch import FAMILIES
from quadapter.models.sites import is_linear, quant_sites

GPT2_SITES = FAMILIES["gpt2"].sites
DEFAULT_SITES = tuple(FAMILIES["gpt2"].block_sites)
from quadapter.quant import QuantizedLayer, QuantizerConfig, QuantSim, quant_range

W8 = QuantizerConfig(8, symmetric=True, granularity="per_channel")
A8 = QuantizerConfig(8)


def tiny_gpt2(**kw) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32, **kw)
    return GPT2LMHeadModel(config).eval()


def linearized(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """The same GPT-2 with every HF Conv1D replaced by the equivalent nn.Linear (weight transposed)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(module.nx, module.nf)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, linear)
    return model


def batches(n=3):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 128, (2, 32), generator=gen) for _ in range(n)]


def quantsim(model, sites=GPT2_SITES, weight=W8, act=A8, calibrate=True):
    layers, outputs = quant_sites(model, sites)
    sim = QuantSim(model, layers, outputs, weight=weight, act=act)
    if calibrate:
        sim.calibrate(batches(), progress=False)
    return sim


@pytest.fixture(params=["conv1d", "linear"])
def kind_and_model(request):
    model = tiny_gpt2()
    return request.param, (model if request.param == "conv1d" else linearized(model))


def test_linearized_twin_is_the_same_function():
    x = batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(tiny_gpt2()(x).logits, linearized(tiny_gpt2())(x).logits, atol=1e-5)


@pytest.mark.parametrize("sites", [GPT2_SITES, DEFAULT_SITES], ids=["all", "default"])
def test_no_targeted_layer_escapes_wrapping(kind_and_model, sites):
    kind, model = kind_and_model
    targets = {id(m) for n, m in model.named_modules()
               if is_linear(m) and (".h." in n or "lm_head" in sites)}
    assert len(targets) == 2 * 4 + ("lm_head" in sites)
    sim = quantsim(model, sites, calibrate=False)
    wrappers = [m for m in model.modules() if isinstance(m, QuantizedLayer)]
    assert {id(w.layer) for w in wrappers} == targets
    assert len(sim.layers) == len(targets)
    block_type = Conv1D if kind == "conv1d" else nn.Linear  # lm_head is an nn.Linear in both
    for name, w in sim.layers.items():  # per-channel weight axis = output channels of the layer
        assert type(w.layer) is (nn.Linear if name == "lm_head" else block_type)
        assert w.weight_quantizer.axis == (1 if isinstance(w.layer, Conv1D) else 0)
    expected_outputs = {"transformer.drop", "transformer.h.0", "transformer.h.1"}
    assert set(sim.outputs) == (expected_outputs if "residual" in sites else set())


def test_a_block_layer_outside_the_site_map_is_an_error_not_an_escape():
    model = tiny_gpt2(add_cross_attention=True)  # crossattention.{c_attn,q_attn,c_proj}
    with pytest.raises(ValueError, match="does not cover: crossattention.c_attn"):
        quant_sites(model, DEFAULT_SITES)


@pytest.mark.parametrize("sites", [[], ["attn.c_attn", "attn_probs"], ["mlp.c_fc", "mlp.c_fc"]])
def test_bad_site_lists_name_the_valid_sites(sites):
    with pytest.raises(ValueError, match="attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, lm_head"):
        quant_sites(tiny_gpt2(), sites)


def test_conv1d_and_linear_models_quantize_identically():
    conv, lin = quantsim(tiny_gpt2()), quantsim(linearized(tiny_gpt2()))
    for name, q in conv.weight_quantizers().items():
        assert torch.equal(q.scale, lin.weight_quantizers()[name].scale)
    x = batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(conv.model(x).logits, lin.model(x).logits, atol=1e-5)


def test_wrapped_conv1d_equals_fused_reference():
    """Independent reference: torch's fused ops on the input and the [in, out] weight (axis 1)."""
    sim = quantsim(tiny_gpt2(), DEFAULT_SITES)
    wrapper = sim.layers["transformer.h.1.mlp.c_fc"]
    x = torch.randn(2, 5, 32) * 3
    wq, aq = wrapper.weight_quantizer, wrapper.input_quantizer
    qmin, qmax = quant_range(8, True)
    w = torch.fake_quantize_per_channel_affine(wrapper.layer.weight, wq.scale, wq.zero_point, 1,
                                               qmin, qmax)
    xq = torch.fake_quantize_per_tensor_affine(x, aq.scale, aq.zero_point, 0, 255)
    expected = torch.addmm(wrapper.layer.bias, xq.view(-1, 32), w).view(2, 5, -1)
    with torch.no_grad():
        assert torch.equal(wrapper(x), expected)


def test_remove_restores_outputs_state_dict_and_modules_exactly():
    model = tiny_gpt2()
    x = batches(1)[0]
    with torch.no_grad():
        fp = model(x).logits
    keys, modules = list(model.state_dict()), dict(model.named_modules())
    sim = quantsim(model)
    with torch.no_grad():
        assert not torch.equal(model(x).logits, fp)
        sim.disable()
        assert torch.equal(model(x).logits, fp)  # disabled quantizers are exact identities
        sim.enable()
    assert sim.remove() is model
    with torch.no_grad():
        assert torch.equal(model(x).logits, fp)
    assert list(model.state_dict()) == keys
    assert dict(model.named_modules()) == modules
    assert not any(m._forward_hooks for m in model.modules())


def test_calibration_sets_every_range_and_gathers_diagnostics():
    model = tiny_gpt2()
    layers, outputs = quant_sites(model, GPT2_SITES)
    sim = QuantSim(model, layers, outputs, weight=W8, act=A8)
    model.train()
    stats = sim.calibrate(batches(), diagnostics=True, progress=False)
    assert model.training  # mode restored
    assert all(q.scale.numel() > 0 for q in sim.quantizers().values())
    assert all(not q.calibrating for q in sim.quantizers().values())
    assert set(stats) == set(sim.activation_quantizers())
    assert "transformer.h.0.attn.c_attn.input" in stats and "transformer.drop.output" in stats
    assert stats["transformer.h.0.mlp.c_proj.input"].summary()["channels"] == 4 * 32
    assert not any(q._forward_pre_hooks for q in sim.quantizers().values())


def test_output_sites_put_the_module_output_on_the_grid():
    model = tiny_gpt2()
    sim = quantsim(model, ["embeddings", "residual"])
    assert not sim.layers
    seen = {}
    for name in ("transformer.drop", "transformer.h.1"):  # runs after QuantSim's own hook
        model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__(name, out))
    with torch.no_grad():
        model(batches(1)[0])
    for name, out in seen.items():
        q = model.get_submodule(name).output_quantizer
        k = out / q.scale + q.zero_point
        assert torch.allclose(k, k.round(), atol=1e-3) and k.round().unique().numel() > 50, name


def test_weight_only_and_per_token_configs():
    weight_only = quantsim(tiny_gpt2(), GPT2_SITES, act=None)
    assert not weight_only.outputs and not weight_only.activation_quantizers()
    per_token = quantsim(tiny_gpt2(), act=QuantizerConfig(8, granularity="per_token"))
    with torch.no_grad():
        assert torch.isfinite(per_token.model(batches(1)[0]).logits).all()
    with pytest.raises(ValueError, match="weight or an activation"):
        QuantSim(tiny_gpt2(), [])


def test_wrapping_twice_is_refused_and_leaves_the_model_intact():
    model = tiny_gpt2()
    layers, _ = quant_sites(model, DEFAULT_SITES)
    QuantSim(model, layers, weight=W8)
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match="already quantized"):
        QuantSim(model, layers, weight=W8)
    assert list(model.state_dict()) == keys


# -- the fake-quantized weight cache --------------------------------------------------------------
@pytest.fixture
def wrapper():
    sim = quantsim(tiny_gpt2(), DEFAULT_SITES)
    return sim.layers["transformer.h.0.attn.c_attn"]


def _fresh(wrapper):
    return wrapper.weight_quantizer(wrapper.layer.weight.detach())


def test_weight_is_quantized_once_while_nothing_changes(wrapper):
    with torch.inference_mode():
        first = wrapper.quantized_weight()
        assert wrapper.quantized_weight() is first
    with torch.no_grad():
        assert wrapper.quantized_weight() is first
    assert torch.equal(first, _fresh(wrapper))
    assert not first.is_inference()  # usable by later autograd code


@pytest.mark.parametrize("change", ["inplace", "new_parameter", "set_range", "load_state_dict",
                                    "dtype"])
def test_cache_is_invalidated_by_every_kind_of_change(wrapper, change):
    with torch.no_grad():
        stale = wrapper.quantized_weight().clone()
        q, layer = wrapper.weight_quantizer, wrapper.layer
        if change == "inplace":
            layer.weight.mul_(1.5)
        elif change == "new_parameter":
            layer.weight = nn.Parameter(layer.weight * 1.5)
        elif change == "set_range":
            lo, hi = torch.aminmax(layer.weight, dim=0)
            q.set_range(lo * 0.5, hi * 0.5)
        elif change == "load_state_dict":
            state = {k: v * 2 if k == "scale" else v for k, v in q.state_dict().items()}
            q.load_state_dict(state)
        else:
            wrapper.double()
        now = wrapper.quantized_weight()
    assert not torch.equal(now.double(), stale.double())
    assert torch.equal(now, _fresh(wrapper))


def test_no_cache_when_the_weight_trains_or_in_training_mode(wrapper):
    x = torch.randn(3, 32)
    wrapper(x).sum().backward()  # grad enabled, weight requires grad: STE to the weight
    assert wrapper.layer.weight.grad is not None and wrapper.layer.weight.grad.abs().sum() > 0
    wrapper.layer.weight.requires_grad_(False)
    wrapper.train()
    with torch.no_grad():
        assert wrapper.quantized_weight() is not wrapper.quantized_weight()


def test_cache_built_in_inference_mode_serves_backward_to_the_input(wrapper):
    wrapper.layer.weight.requires_grad_(False)
    with torch.inference_mode():
        wrapper(torch.randn(3, 32))
    x = torch.randn(3, 32, requires_grad=True)
    wrapper(x).sum().backward()  # would fail on a cached inference tensor
    assert x.grad is not None
