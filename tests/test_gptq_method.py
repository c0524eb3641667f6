"""method=gptq end to end: on the small pretrained GPT-2 it beats round-to-nearest (method=ptq with the
same grid) in perplexity, on GPT-2 and a random Llama every quantized weight ends exactly on its
quantizer's grid, and what makes no sense for GPTQ is refused in one line."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF, SMALL_OVERRIDES, refusal
from hydra import compose, initialize_config_dir

from quadapter.methods import check_config
from quadapter.runner import run

QUICK = [*SMALL_OVERRIDES, "eval.max_tokens=2048", "quantizer.calibration.blocks=16", "logger=csv",
         "trainer.enable_progress_bar=false"]


def make_cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*QUICK, *overrides])


def random_llama(small_model_dir, out):
    """A 2-layer random Llama (GQA) reading the small model's tokenizer."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(small_model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=128)).save_pretrained(out)
    for f in small_model_dir.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("quantizer", ["per_channel", "per_group"])
def test_every_quantized_weight_ends_exactly_on_its_grid(arch, quantizer, tmp_path, small_model_dir, isolated_env):
    from conftest import run_context

    from quadapter.methods import gptq
    from quadapter.models.loading import load_model
    from quadapter.quant.sim import QuantizedLayer

    model_dir = small_model_dir if arch == "gpt2" else random_llama(small_model_dir, tmp_path / "llama")
    over = [f"paths.cache_dir={small_model_dir.parents[1]}"]
    if arch == "llama":
        over = [f"model.name_or_path={model_dir}", "model.arch=llama", "model.pretrain=null", "model.name=llama"]
    if quantizer == "per_group":
        over += ["quantizer.weight.granularity=per_group", "quantizer.weight.group_size=16"]
    cfg = make_cfg("method=gptq", "bits=w3", *over)
    check_config(cfg)
    model, tok = load_model(str(model_dir), arch=arch)
    before = {n: p.clone() for n, p in model.named_parameters()}
    quantized = gptq.apply(run_context(cfg, model, tok, tmp_path / "run", isolated_env))
    layers = [m for m in quantized.modules() if isinstance(m, QuantizedLayer)]
    assert len(layers) == 2 * (4 if arch == "gpt2" else 7)
    for layer in layers:
        weight = layer.layer.weight
        torch.testing.assert_close(layer.weight_quantizer(weight), weight, rtol=0, atol=0)
    changed = [n for n, p in quantized.named_parameters() if not torch.equal(p, before[n.replace(".layer.", ".")])]
    assert changed and all(n.endswith(".layer.weight") for n in changed)  # only the quantized weights moved


def test_what_gptq_cannot_do_is_refused_in_one_line():
    def refused(*overrides) -> str:
        return refusal("method=gptq", *overrides)

    assert "method=gptq quantizes weights only, not activations" in refused("bits=w4a8")
    assert "not bits.weight=ternary" in refused("bits=wtern")
    assert "method=gptq fixes the ranges it quantizes to" in refused("quantizer=learned", "bits=w4")
    assert "method=gptq needs task=lm" in refused("task=glue")


def test_gptq_beats_round_to_nearest_at_three_bits(tmp_path, small_model_dir):
    cache = f"paths.cache_dir={small_model_dir.parents[1]}"
    rtn = run(make_cfg("method=ptq", "bits=w3", "bits.act=null", "bits.name=w3", cache), tmp_path / "rtn")
    gptq = run(make_cfg("method=gptq", "bits=w3", cache), tmp_path / "gptq")
    assert rtn["status"] == gptq["status"] == "completed", (rtn.get("error"), gptq.get("error"))
    for key, ppl in gptq["metrics"].items():
        assert ppl < rtn["metrics"][key], key
    summary = gptq["gptq"]
    assert [b["block"] for b in summary["blocks"]] == ["transformer.h.0", "transformer.h.1"]
    assert all(b["layers"] == 4 and b["proxy_loss"] > 0 for b in summary["blocks"])
    assert gptq["quantization"]["weight"]["bits"] == 3 and "act" not in gptq["quantization"] or \
        gptq["quantization"].get("act") is None
