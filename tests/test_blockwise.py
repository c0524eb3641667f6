"""The block-reconstruction engine: per-unit L2 between quantized and full-precision blocks."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from quadapter.methods.blockwise import capture_block_inputs, reconstruct_blocks, toggled
from quadapter.models.sites import quant_sites
from quadapter.quant.sim import QuantizerConfig, QuantSim


@pytest.fixture()
def quantized():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=96, n_head=3, vocab_size=101,
                                       n_positions=32)).eval()
    data = torch.randint(0, 101, (24, 32))
    layers, outputs = quant_sites(model, ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"])
    act = QuantizerConfig(bits=4, learnable="min_max")
    sim = QuantSim(model, layers, outputs, weight=QuantizerConfig(bits=4, symmetric=True,
                                                                  granularity="per_channel"), act=act)
    sim.calibrate([data[:8]], progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    for q in sim.activation_quantizers().values():
        for p in q.range_parameters():
            p.requires_grad_(True)
    return model, sim, data


def ranges_of(sim):
    def trainable(blocks):
        params = [p for b in blocks for n, m in b.named_modules() if n.endswith("input_quantizer")
                  for p in m.range_parameters()]
        return [{"params": params, "lr": 5e-3}]
    return trainable


@pytest.mark.parametrize("unit_size,target_offset", [(1, 0), (2, 0), (1, 1)])
def test_reconstruction_lowers_the_l2_it_reports(quantized, tmp_path, unit_size, target_offset):
    model, sim, data = quantized
    blocks = list(model.transformer.h)
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, data, batch_size=8)
    assert inputs.shape == (24, 32, 96)
    report = reconstruct_blocks(blocks, inputs, kwargs, ranges_of(sim),
                                lambda on: toggled(sim.enable, on), steps=40, batch_size=8,
                                unit_size=unit_size, target_offset=target_offset)
    assert [r["unit"] for r in report] == list(range(0, 3, unit_size))
    assert all(r["l2_after"] < r["l2_before"] for r in report)


def test_block_inputs_are_the_full_precision_activations(quantized, tmp_path):
    model, sim, data = quantized
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, list(model.transformer.h), data, 8, tmp_path)
        hidden = model(data, output_hidden_states=True).hidden_states[0]
    assert torch.allclose(inputs, hidden, atol=1e-6)
    assert (tmp_path / "block_inputs.bin").stat().st_size == inputs.numel() * 4  # file-backed


def first(out):
    """A block's hidden states (a tuple's first element in older transformers)."""
    return out[0] if isinstance(out, tuple) else out


def _manual_l2(sim, blocks, x, quantized_part, fp_part):
    """mean((FP after-blocks(quantized unit(x))) − FP(unit + after)(x))², written out."""
    def run(mods, h):
        for m in mods:
            h = first(m(h))
        return h

    with torch.no_grad():
        with toggled(sim.enable, False):
            target = run([*quantized_part, *fp_part], x)
        with toggled(sim.enable, True):
            h = run(quantized_part, x)
        with toggled(sim.enable, False):
            prediction = run(fp_part, h)
    return float((prediction - target).pow(2).mean())


def _walk_without_steps(quantized, **engine):
    """The engine's walk over every block with no steps: its blocks, inputs and report."""
    model, sim, data = quantized
    blocks = list(model.transformer.h)
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, data, batch_size=24)
    report = reconstruct_blocks(blocks, inputs, kwargs, ranges_of(sim), lambda on: toggled(sim.enable, on),
                                steps=0, batch_size=24, **engine)
    return blocks, inputs, report


def test_a_downstream_target_runs_the_blocks_after_the_unit_in_full_precision(quantized):
    sim = quantized[1]
    blocks, inputs, report = _walk_without_steps(quantized, unit_size=1, target_offset=1)
    assert [r["target_offset"] for r in report] == [1, 1, 0]  # the last unit has no block after it
    assert report[0]["l2_before"] == pytest.approx(_manual_l2(sim, blocks, inputs, blocks[:1], blocks[1:2]), rel=1e-5)


def test_quantized_inputs_feed_each_unit_what_the_quantized_units_before_it_made(quantized):
    sim = quantized[1]
    blocks, inputs, report = _walk_without_steps(quantized, quantized_inputs=True)
    with torch.no_grad(), toggled(sim.enable, True):
        quantized_in = first(blocks[0](inputs))
    with torch.no_grad(), toggled(sim.enable, False):
        fp_in = first(blocks[0](inputs))
        target = first(blocks[1](fp_in))
    with torch.no_grad(), toggled(sim.enable, True):
        expected = float((first(blocks[1](quantized_in)) - target).pow(2).mean())
    assert report[1]["l2_before"] == pytest.approx(expected, rel=1e-5)


def test_a_unit_that_ends_worse_is_put_back_as_it_was(quantized):
    model, sim, data = quantized
    blocks = list(model.transformer.h)
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, data, batch_size=8)
    before = {k: v.clone() for k, v in blocks[0].state_dict().items()}

    def wild(unit):  # a learning rate that can only make things worse
        return [{**g, "lr": 50.0} for g in ranges_of(sim)(unit)]

    report = reconstruct_blocks(blocks[:1], inputs, kwargs, wild, lambda on: toggled(sim.enable, on),
                                steps=10, batch_size=8, revert_if_worse=True)
    assert report[0]["reverted"] and report[0]["l2_after"] == pytest.approx(report[0]["l2_before"], rel=1e-6)
    after = blocks[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert report[0]["seconds"] > 0 and report[0]["peak_memory_mb"] > 0 and report[0]["memory"] == "cpu_resident"
