"""method=blockptq end to end: the block-wise baseline never ends a unit worse than round-to-nearest,
joint and downstream units on a random GPT-2 and a random Llama end with every quantized weight exactly
on its grid (re-quantized from the saved checkpoint with its saved encodings), results.json records what
the issue asks, and what makes no sense is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF, refusal, run_context
from hydra import compose, initialize_config_dir
from test_gptq_method import QUICK, random_llama

from quadapter.methods import check_config


def make_cfg(*overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*QUICK, "method=blockptq", "bits=w3", "method.steps=12",
                                            "method.batch_size=4", "quantizer.calibration.blocks=8", *overrides])


def quantize(cfg, model_dir, arch, run_dir, env):
    from quadapter.methods import blockptq
    from quadapter.models.loading import load_model

    check_config(cfg)
    model, tok = load_model(str(model_dir), arch=arch)
    ctx = run_context(cfg, model, tok, run_dir, env)
    return blockptq.apply(ctx), ctx


def model_args(arch, small_model_dir, tmp_path):
    if arch == "gpt2":
        return small_model_dir, [f"paths.cache_dir={small_model_dir.parents[1]}"]
    model_dir = random_llama(small_model_dir, tmp_path / "llama")
    return model_dir, [f"model.name_or_path={model_dir}", "model.arch=llama", "model.pretrain=null",
                       "model.name=llama"]


@pytest.mark.parametrize("learn", ["[rounding]", "[weights]", "[rounding,scales]"])
def test_the_blockwise_baseline_never_ends_a_unit_worse_than_it_started(learn, tmp_path, small_model_dir,
                                                                        isolated_env):
    over = ["quantizer=learned"] if "scales" in learn else []
    cfg = make_cfg(f"method.learn={learn}", "method.unit_size=1", "method.target_offset=0",
                   f"paths.cache_dir={small_model_dir.parents[1]}", *over)
    _, ctx = quantize(cfg, small_model_dir, "gpt2", tmp_path / "run", isolated_env)
    units = ctx.summary["blockptq"]["units"]
    assert len(units) == 2 and all(u["l2_after"] <= u["l2_before"] for u in units)
    assert all(u["blocks"] == 1 and u["target_offset"] == 0 for u in units)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("unit_size,target_offset", [(2, 0), (1, 1)])
def test_joint_and_downstream_units_save_weights_exactly_on_their_grid(arch, unit_size, target_offset, tmp_path,
                                                                       small_model_dir, isolated_env):
    from quadapter.models.loading import load_model
    from quadapter.quant.sim import QuantizedLayer

    model_dir, over = model_args(arch, small_model_dir, tmp_path)
    cfg = make_cfg(f"method.unit_size={unit_size}", f"method.target_offset={target_offset}",
                   "quantizer=minmax_g64", "quantizer.weight.group_size=16", *over)
    model, ctx = quantize(cfg, model_dir, arch, tmp_path / "run", isolated_env)
    summary = ctx.summary["blockptq"]
    assert [u["blocks"] for u in summary["units"]] == ([2] if unit_size == 2 else [1, 1])
    assert [u["target_offset"] for u in summary["units"]] == ([0] if unit_size == 2 else [1, 0])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    assert len(layers) == 2 * (4 if arch == "gpt2" else 7)
    for layer in layers.values():  # in memory: the quantizer's round-to-nearest leaves every weight in place
        assert layer.weight_quantizer.rounding is None
        torch.testing.assert_close(layer.weight_quantizer(layer.layer.weight), layer.layer.weight, rtol=0, atol=0)
    # from disk: the saved checkpoint re-quantized with the saved encodings is itself
    saved, _ = load_model(summary["saved"], arch=arch)
    encodings = json.loads((tmp_path / "run" / "quantized" / "quantizer_encodings.json").read_text())
    for name, layer in layers.items():
        enc = encodings[f"{name}.weight"]
        weight = saved.get_parameter(f"{name}.weight").detach()
        rows = weight if layer.weight_quantizer.axis % 2 == 0 else weight.t()
        groups = rows.reshape(-1, enc["group_size"])
        scale = torch.tensor(enc["scale"]).view(-1, 1)
        zero = torch.tensor(enc["zero_point"], dtype=torch.float32).view(-1, 1)
        levels = torch.round(groups / scale) + zero
        assert levels.min() >= 0 and levels.max() <= 2 ** enc["bits"] - 1
        torch.testing.assert_close((levels - zero) * scale, groups, rtol=0, atol=1e-6 * scale.max().item())


def test_results_record_unit_target_learned_bits_effective_bits_l2_time_and_memory(tmp_path, small_model_dir,
                                                                                   isolated_env):
    from quadapter.runner import run

    cfg = make_cfg("method.unit_size=2", "method.target_offset=0", "quantizer=minmax_g64",
                   "quantizer.weight.group_size=16", f"paths.cache_dir={small_model_dir.parents[1]}",
                   "method.save_quantized=false")
    results = run(cfg, tmp_path / "run")
    record = results["blockptq"]
    assert record["learn"] == ["weights"] and record["unit_size"] == 2 and record["target_offset"] == 0
    assert record["bits"] == 3 and record["granularity"] == "per_group" and record["group_size"] == 16
    assert record["effective_bits"] == pytest.approx(3 + (32 + 3) / 16)  # 3-bit levels + a scale and zero point per 16
    unit = record["units"][0]
    assert unit["l2_after"] < unit["l2_before"] and unit["seconds"] > 0 and unit["peak_memory_mb"] > 0
    assert results["status"] == "completed" and results["metrics"]


def test_what_blockptq_cannot_do_is_refused_in_one_line():
    def refused(*overrides) -> str:
        return refusal("method=blockptq", *overrides)

    assert "method=blockptq quantizes weights only" in refused("bits=w4a8")
    assert "choose one" in refused("method.learn=[rounding,weights]")
    assert "quantizer.learnable=beta_gamma" in refused("method.learn=[scales]")
    assert "method.learn" in refused("method.learn=[everything]")
    assert "needs task=lm" in refused("task=glue", "model=minilm-l6")
