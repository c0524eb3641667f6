"""The conformance suite every architecture adapter passes (``quadapter.models.arch``).

Each family runs on shrunk random-weight models of its model types, with odd sizes and (Llama,
Mistral, Qwen2) grouped-query attention: every linear of a block is a quantizer site, per-channel
weight ranges lie on the output-channel axis, every scale region is the identity with quantizers
off and folds exactly with them on, the folded checkpoint differs from the original only in the
regions' producers and consumers (by α and 1/α, computed here independently from the state dict),
gradients reach α alone, SmoothQuant's α and the outlier profile work per region, and block-wise
reconstruction runs on the family's blocks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from quadapter.adapters import ChannelScale
from quadapter.methods.blockwise import capture_block_inputs, reconstruct_blocks, toggled
from quadapter.models.arch import FAMILIES, LinearOutput, Norm, for_model
from quadapter.models.outliers import apply_outlier_profile
from quadapter.models.regions import attach_scales, block_regions, fold_scales
from quadapter.models.sites import input_axis, is_linear, quant_sites
from quadapter.quant import QuantizedLayer, QuantizerConfig, QuantSim

VOCAB, T = 101, 24
W8 = QuantizerConfig(8, symmetric=True, granularity="per_channel")
W4 = QuantizerConfig(4, symmetric=False, granularity="per_channel")
A8 = QuantizerConfig(8)


def _randomize_norms_and_biases(model: nn.Module) -> nn.Module:
    """Random positive norm weights and random biases (the inits are ones and zeros, under which a
    fold into the wrong channel or a missed bias would not show)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model


MODELS = {  # shrunk, odd-sized, random weights; one per model type every family covers
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=54, n_head=3, vocab_size=VOCAB,
                                               n_positions=32)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=54, intermediate_size=97, num_hidden_layers=2,
        num_attention_heads=9, num_key_value_heads=3, head_dim=6, max_position_embeddings=64,
        tie_word_embeddings=True)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB, hidden_size=40, intermediate_size=66, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        sliding_window=None)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=71, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True)),
    "bert": lambda: BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=54, intermediate_size=97, num_hidden_layers=2,
        num_attention_heads=3, max_position_embeddings=64, num_labels=3)),
    "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=71, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=66, num_labels=2, pad_token_id=1)),
}


def test_every_model_type_of_every_family_has_a_test_model():
    assert {t for a in FAMILIES.values() for t in a.model_types} == set(MODELS)


def make(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_norms_and_biases(MODELS[model_type]()).eval()


def ids(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output and the last hidden state, flattened: a classifier's few logits alone would hide
    what quantization and folding do to the blocks."""
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def quantized(model: nn.Module, weight=W8, act=A8, sites=None) -> QuantSim:
    sim = QuantSim(model, *quant_sites(model, sites), weight=weight, act=act)
    sim.calibrate([ids(2, s) for s in range(2)], progress=False)
    return sim


def random_alpha(n: int, seed: int) -> torch.Tensor:
    return torch.exp(0.5 * torch.randn(n, generator=torch.Generator().manual_seed(seed)))


def randomize(scales: dict[str, ChannelScale], powers_of_two: bool = False) -> None:
    """Random α per channel; powers of two make every fold bit-exact in float arithmetic (scaling by
    2^k commutes with rounding), so a fold can be checked for equality, not closeness."""
    with torch.no_grad():
        for i, scale in enumerate(scales.values()):
            alpha = random_alpha(scale.log_alpha.numel(), 10 + i)
            scale.log_alpha.copy_((alpha.log2().round().exp2() if powers_of_two else alpha).log())


@pytest.fixture(params=sorted(MODELS))
def model_type(request) -> str:
    return request.param


def regions_of(model_type: str) -> tuple[str, ...]:
    return tuple(for_model(MODELS[model_type]()).regions)


# ---- sites -------------------------------------------------------------------------------------

def test_every_block_linear_is_a_site_and_nothing_else_is_wrapped(model_type):
    model = make(model_type)
    arch = for_model(model)
    blocks = [name for name, _ in arch.block_list(model)]
    in_blocks = {id(m) for n, m in model.named_modules()
                 if is_linear(m) and any(n.startswith(b + ".") for b in blocks)}
    assert len(in_blocks) == len(blocks) * len(arch.block_sites)
    sim = QuantSim(model, *quant_sites(model, None), weight=W8, act=A8)
    assert {id(w.layer) for w in model.modules() if isinstance(w, QuantizedLayer)} == in_blocks
    sim.remove()
    sim = QuantSim(model, *quant_sites(model, arch.sites), weight=W8, act=A8)
    assert len(sim.layers) == len(in_blocks) + len(arch.head_sites)  # + lm_head, or pooler and classifier
    assert set(sim.outputs) == {arch.embeddings_path(model), *blocks}  # embeddings, residual


def test_a_block_linear_outside_the_site_map_is_an_error(model_type):
    model = make(model_type)
    name, block = for_model(model).block_list(model)[1]
    block.add_module("extra_proj", nn.Linear(4, 4))
    with pytest.raises(ValueError, match=f"{name} has linear layers .* does not cover: extra_proj"):
        quant_sites(model, None)


def test_the_attention_output_is_a_block_linear_fed_the_attention_mix(model_type):
    """Distillation's attention term reads this site's output in every block."""
    model = make(model_type)
    arch = for_model(model)
    assert arch.attention_output in arch.block_sites
    for _, block in arch.block_list(model):
        assert is_linear(block.get_submodule(arch.block_sites[arch.attention_output]))


def test_site_names_are_the_family_s(model_type):
    model = make(model_type)
    other = next(a for a in FAMILIES.values() if a is not for_model(model))
    with pytest.raises(ValueError, match=f"model.arch={for_model(model).family}"):
        quant_sites(model, [next(iter(other.block_sites))])


def test_per_channel_weight_ranges_lie_on_the_output_channel_axis(model_type):
    model = make(model_type)
    sim = quantized(model)
    for name, wrapper in sim.layers.items():
        w, q = wrapper.layer.weight.detach(), wrapper.weight_quantizer
        out_axis = 1 - input_axis(wrapper.layer)
        assert q.scale.numel() == w.shape[out_axis], name
        torch.testing.assert_close(q.scale.flatten(), w.abs().amax(dim=1 - out_axis) / 127, rtol=1e-5, atol=0)


def test_quantsim_removal_restores_the_model_exactly(model_type):
    model = make(model_type)
    x = ids()
    reference, keys = logits(model, x), set(model.state_dict())
    sim = quantized(model, sites=for_model(model).sites)
    assert not torch.allclose(logits(model, x), reference)
    sim.remove()
    assert torch.equal(logits(model, x), reference) and set(model.state_dict()) == keys


# ---- scale regions -----------------------------------------------------------------------------

def test_random_alpha_with_quantizers_off_is_the_identity(model_type):
    model = make(model_type)
    x = ids()
    reference = logits(model, x)
    sim = quantized(model)
    randomize(attach_scales(sim, model, regions_of(model_type)))
    sim.disable()
    torch.testing.assert_close(logits(model, x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weight", [W8, W4], ids=["w8sym", "w4asym"])
def test_every_region_folds_exactly_with_quantizers_on(model_type, weight):
    """With α a power of two per channel the folded quantized model is bit-identical to the unfolded
    one; a wrong channel, axis or head mapping anywhere would change the logits."""
    model = make(model_type)
    x = ids()
    fp = logits(model, x)
    sim = quantized(model, weight=weight)
    scales = attach_scales(sim, model, regions_of(model_type))
    randomize(scales, powers_of_two=True)
    sim.calibrate([ids(2, s) for s in range(2)], progress=False)  # ranges of x·α and W/α
    unfolded = logits(model, x)
    assert not torch.allclose(unfolded, fp, atol=1e-3)  # quantization is really on
    fold_scales(sim, model, scales)
    assert not any(isinstance(m, ChannelScale) for m in model.modules())
    assert torch.equal(logits(model, x), unfolded)
    sim.remove()  # the folded FP model is the original function
    torch.testing.assert_close(logits(model, x), fp, atol=1e-5 * fp.abs().max().item(), rtol=0)


def test_random_alpha_folds_to_float_rounding(model_type):
    """Any positive α: the same, up to float rounding (which may flip a rare rounding tie)."""
    model = make(model_type)
    x = ids()
    sim = quantized(model, weight=None)  # no weight grid: nothing to flip at a rounding tie there
    scales = attach_scales(sim, model, regions_of(model_type))
    randomize(scales)
    sim.calibrate([ids(2, s) for s in range(2)], progress=False)
    unfolded = logits(model, x)
    fold_scales(sim, model, scales)
    torch.testing.assert_close(logits(model, x), unfolded, atol=1e-3 * unfolded.abs().max().item(), rtol=0)


def unwrap(module: nn.Module) -> nn.Module:
    return module.layer if isinstance(module, QuantizedLayer) else module


def _expected_fold(arch, model, original: dict[str, torch.Tensor], alphas: dict[str, torch.Tensor]):
    """The folded state dict, computed from the declarations on the original tensors: each
    region's producer ×α on its output channels, each consumer ÷α on its input channels."""
    expected = {k: v.clone() for k, v in original.items()}
    touched = set()
    for block_name, _ in arch.block_list(model):
        for name, region in arch.regions.items():
            alpha = alphas[f"{block_name}.{name}"]
            if isinstance(region.producer, Norm):
                for param in ("weight", "bias"):
                    key = f"{block_name}.{region.producer.path}.{param}"
                    if key in expected:
                        expected[key] = expected[key] * alpha
                        touched.add(key)
            else:
                path = f"{block_name}.{arch.block_sites[region.producer.site]}"
                layer = unwrap(model.get_submodule(path))
                out_axis = 1 - input_axis(layer)
                start, stop = (region.producer.channels(model.config) if region.producer.channels
                               else (0, layer.weight.shape[out_axis]))
                w = expected[f"{path}.weight"]
                shape = [-1 if a == out_axis else 1 for a in range(2)]
                w.narrow(out_axis, start, stop - start).mul_(alpha.view(shape))
                touched.add(f"{path}.weight")
                if f"{path}.bias" in expected:
                    expected[f"{path}.bias"][start:stop] *= alpha
                    touched.add(f"{path}.bias")
            heads = arch.heads(model.config)
            if region.repeat_kv and heads.query != heads.kv:  # query head h reads KV head h // rep
                alpha = alpha.view(heads.kv, 1, heads.dim).expand(-1, heads.query // heads.kv, -1).flatten()
            for consumer in region.consumers:
                path = f"{block_name}.{arch.block_sites[consumer]}"
                axis = input_axis(unwrap(model.get_submodule(path)))
                shape = [-1 if a == axis else 1 for a in range(2)]
                expected[f"{path}.weight"] = expected[f"{path}.weight"] / alpha.view(shape)
                touched.add(f"{path}.weight")
    return expected, touched


def test_folded_checkpoint_differs_only_in_producers_and_consumers(model_type, tmp_path):
    """The issue's criterion: save_pretrained of the folded model vs the original, tensor by tensor."""
    model = make(model_type)
    arch = for_model(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    sim = quantized(model)
    scales = attach_scales(sim, model, tuple(arch.regions))
    randomize(scales)
    alphas = {k: s.alpha().detach().clone() for k, s in scales.items()}
    fold_scales(sim, model, scales)
    model.save_pretrained(tmp_path, state_dict=sim.original_state_dict())
    folded = type(model).from_pretrained(tmp_path).state_dict()
    assert set(folded) == set(original)
    expected, touched = _expected_fold(arch, model, original, alphas)
    changed = {k for k in folded if not torch.equal(folded[k], original[k])}
    assert changed == touched
    for key in folded:
        torch.testing.assert_close(folded[key], expected[key], rtol=1e-6, atol=0, msg=key)


def test_gradients_reach_alpha_only(model_type):
    model = make(model_type)
    model.requires_grad_(False)
    sim = quantized(model)
    scales = attach_scales(sim, model, regions_of(model_type))
    model.train()
    x = ids()
    model(x).logits.square().mean().backward()  # any loss on the output; causal LMs and classifiers alike
    for key, scale in scales.items():
        assert scale.log_alpha.grad is not None and scale.log_alpha.grad.abs().sum() > 0, key
    assert all(p.grad is None for n, p in model.named_parameters() if "log_alpha" not in n)


def test_consumers_of_a_region_share_one_alpha(model_type):
    model = make(model_type)
    sim = quantized(model)
    scales = attach_scales(sim, model, regions_of(model_type))
    for key, region in block_regions(model, regions_of(model_type)).items():
        assert all(sim.layers[c].input_scale is scales[key] for c in region.consumers)
        assert scales[key].log_alpha.numel() == region.channels
    n_params = len({id(p) for p in model.parameters() if p.requires_grad and p.dim() == 1
                    and any(p is s.log_alpha for s in scales.values())})
    assert n_params == len(scales)


def test_grouped_query_alpha_lives_on_the_kv_channels():
    model = make("llama")
    sim = quantized(model)
    scale = attach_scales(sim, model, ["v_proj"])["model.layers.0.v_proj"]
    assert scale.log_alpha.numel() == 3 * 6 and scale().numel() == 9 * 6
    with torch.no_grad():
        scale.log_alpha.copy_(torch.arange(18.0))
    consumer = scale().view(9, 6)  # query head h reads KV head h // 3
    assert torch.equal(consumer[4], torch.arange(6.0, 12.0).exp())


def test_linear_producers_refuse_per_tensor_weight_ranges(model_type):
    model = make(model_type)
    linear = [n for n, r in for_model(model).regions.items() if isinstance(r.producer, LinearOutput)]
    sim = quantized(model, weight=QuantizerConfig(8))
    scales = attach_scales(sim, model, linear)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="per_channel"):
        fold_scales(sim, model, scales)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---- SmoothQuant, outlier profile, block-wise reconstruction ----------------------------------

def test_smoothquant_alpha_on_every_region(model_type, tmp_path):
    from quadapter.methods import RunContext
    from quadapter.methods.smoothing import smooth
    from omegaconf import OmegaConf

    model = make(model_type)
    x = ids()
    reference = logits(model, x)
    sim = QuantSim(model, *quant_sites(model, None), weight=W8, act=A8)
    stats = sim.calibrate([ids(2, s) for s in range(2)], diagnostics=True, progress=False)
    cfg = OmegaConf.create({"quantizer": {}})
    calibration = SimpleNamespace(forward=lambda m, batch: m(batch))  # the task's calibration forward
    ctx = RunContext(cfg=cfg, model=model, tokenizer=None, run_dir=tmp_path, cache_dir=tmp_path,
                     outlier_stats=stats, task=calibration)
    import quadapter.methods.ptq as ptq_module

    with pytest.MonkeyPatch.context() as mp:  # recalibration on the same random batches
        mp.setattr("quadapter.methods.smoothing.quant_settings", lambda cfg, method: None)
        mp.setattr(ptq_module, "calibration_batches", lambda ctx, s: ([ids(2, s) for s in range(2)], {}))
        scales = smooth(ctx, sim, regions_of(model_type), 0.5, "ptq")
    for key, region in block_regions(model, regions_of(model_type)).items():
        consumer = sim.layers[region.consumers[0]]
        act = region.reduce(stats[f"{region.consumers[0]}.input"].absmax)
        w = torch.stack([sim.layers[c].layer.weight.abs().amax(dim=1 - input_axis(sim.layers[c].layer))
                         for c in region.consumers]).amax(0)
        torch.testing.assert_close(scales[key].alpha(), region.reduce(w).sqrt() / act.sqrt(), rtol=1e-5, atol=0)
        assert consumer.input_scale is scales[key]
    sim.disable()
    torch.testing.assert_close(logits(model, x), reference, atol=1e-5, rtol=1e-5)


def test_outlier_profile_is_function_preserving_and_makes_outliers(model_type):
    model = make(model_type)
    if not any(isinstance(r.producer, Norm) for r in for_model(model).regions.values()):
        with pytest.raises(ValueError, match="post-LayerNorm.*drop model.outliers"):
            apply_outlier_profile(model, {"channels": 2, "factor": 30.0, "seed": 0})
        return
    x = ids()
    reference = logits(model, x)
    record = apply_outlier_profile(model, {"channels": 2, "factor": 30.0, "seed": 0})
    torch.testing.assert_close(logits(model, x), reference, atol=1e-4, rtol=1e-4)
    arch = for_model(model)
    norms = [r for r in arch.regions.values() if isinstance(r.producer, Norm)]
    assert len(record["sites"]) == len(norms) == 2 and record["blocks"] == 2
    sim = QuantSim(model, *quant_sites(model, None), weight=None, act=A8)
    stats = sim.calibrate([x], diagnostics=True, progress=False)
    consumer = f"{arch.block_list(model)[0][0]}.{arch.block_sites[norms[0].consumers[0]]}.input"
    assert sorted(stats[consumer].summary(2)["top_channels"]) == record["channel_ids"]


def test_blockwise_reconstruction_runs_on_the_family_s_blocks(model_type):
    model = make(model_type)
    model.requires_grad_(False)
    sim = quantized(model, weight=W4, act=QuantizerConfig(4))
    scales = attach_scales(sim, model, regions_of(model_type))
    randomize(scales)  # far from a good α: reconstruction has something to fix
    names, blocks = map(list, zip(*for_model(model).block_list(model)))
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, torch.cat([ids(3, 0), ids(2, 1)]), 2)
    assert inputs.shape[:2] == (5, T)

    def trainable(unit):
        prefix = names[blocks.index(unit[0])] + "."
        return [{"params": [s.log_alpha for k, s in scales.items() if k.startswith(prefix)], "lr": 0.05}]

    report = reconstruct_blocks(blocks, inputs, kwargs, trainable, lambda on: toggled(sim.enable, on),
                                steps=30, batch_size=2, seed=0)
    assert [r["unit"] for r in report] == [0, 1]
    assert all(r["l2_after"] < r["l2_before"] for r in report), report
