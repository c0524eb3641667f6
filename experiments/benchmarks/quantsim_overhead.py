"""Cost of W8A8 fake quantization (QuantSim) over the full-precision model, side by side.

Forward (as evaluation runs it, under inference_mode) and training step (forward, backward and
AdamW on every weight: QAT, the costliest case, where weights are re-quantized every step) of a
QuantSim-wrapped GPT-2 divided by the same model unwrapped, timed interleaved in one process.
Two ablations show what each optimization buys: the ``fused`` rows replace the CPU fast path by
torch's fused fake-quant kernels (what FakeQuantizer used before), the ``no cache`` rows
re-quantize frozen weights every forward (training always does). Random weights: speed does not
depend on them. The ``learned ranges`` rows train min/max ranges too (what ``method=qat`` runs by
default); their ``autograd chain`` ablation is the elementwise formula autograd traced before the
closed-form straight-through backward.

    python experiments/benchmarks/quantsim_overhead.py [--repeats 30] [--gpt2-train]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from contextlib import contextmanager
from typing import Callable

import torch
from common import interleaved_times  # benchmarks run as scripts, from this folder
from transformers import GPT2Config, GPT2LMHeadModel

from quadapter.models.arch import FAMILIES
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim
from quadapter.quant import quantizer as quantizer_module
from quadapter.quant.functional import round_ste

SHAPES = {  # name: (config, batch, sequence length)
    "tiny 4x192, 4k vocab": (GPT2Config(n_layer=4, n_embd=192, n_head=4, vocab_size=4096,
                                        n_positions=128), 8, 128),
    "gpt2-small 12x768, 50k": (GPT2Config(), 1, 1024),
}
VARIANTS = {  # name: (CPU fast path, weight cache, learned ranges)
    "fused, no cache (before)": (False, False, False),
    "fused + weight cache": (False, True, False),
    "fast path, no cache": (True, False, False),
    "fast path + weight cache (now)": (True, True, False),
    "learned ranges, autograd chain": (False, True, True),
    "learned ranges (now)": (True, True, True),
}
FORWARD_VARIANTS = tuple(VARIANTS)[:4]
TRAIN_VARIANTS = ("fused, no cache (before)", "fast path + weight cache (now)",
                  "learned ranges, autograd chain", "learned ranges (now)")  # training mode never
# uses the weight cache, so the other two rows would time the same code again


def fused_only(x, scale, zero_point, qmin, qmax, axis=None):
    """The previous FakeQuantizer fixed-range path: torch's fused kernels on every device."""
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, qmin, qmax)


def autograd_chain(x, scale, zero_point, qmin, qmax):
    """The previous learnable-range path: the STE formula as elementwise ops autograd traces."""
    xf = x.to(torch.promote_types(x.dtype, scale.dtype))
    q = round_ste(xf.detach() * (1.0 / scale)) + zero_point
    inside = (q >= qmin) & (q <= qmax)
    out = (q.clamp(qmin, qmax) - zero_point) * scale
    return (out + torch.where(inside, xf - xf.detach(), 0.0)).to(x.dtype)


@contextmanager
def cpu_path(fast: bool):
    """``fast=False``: the fused kernels for fixed ranges, the autograd chain for learned ones."""
    originals = quantizer_module.fake_quant_fixed, quantizer_module.fake_quant
    if not fast:
        quantizer_module.fake_quant_fixed, quantizer_module.fake_quant = fused_only, autograd_chain
    try:
        yield
    finally:
        quantizer_module.fake_quant_fixed, quantizer_module.fake_quant = originals


def quantized_copy(model: GPT2LMHeadModel, ids: torch.Tensor, cache: bool,
                   learned: bool) -> GPT2LMHeadModel:
    model = copy.deepcopy(model)
    layers, outputs = quant_sites(model, None)
    learnable = "min_max" if learned else "none"
    sim = QuantSim(model, layers, outputs,
                   weight=QuantizerConfig(8, True, "per_channel", learnable=learnable),
                   act=QuantizerConfig(8, learnable=learnable), cache_weight=cache)
    sim.calibrate([ids], progress=False)
    return model


def forward_step(model: GPT2LMHeadModel, ids: torch.Tensor) -> Callable[[], None]:
    def step():
        model.eval()
        with torch.inference_mode():
            model(ids)
    return step


def train_step(model: GPT2LMHeadModel, ids: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        model.train()
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def median_times(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per step over interleaved rounds, each step on its own code path."""
    times = interleaved_times(steps, repeats, around=lambda name: cpu_path(VARIANTS.get(name, (True,))[0]))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds on the tiny shape")
    parser.add_argument("--gpt2-repeats", type=int, default=5, help="timed rounds, GPT-2 shape")
    parser.add_argument("--gpt2-train", action="store_true",
                        help="also time training steps at the GPT-2 shape (slow on a CPU)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; W8A8: weights per channel"
          f" symmetric, activations per tensor; sites {', '.join(FAMILIES['gpt2'].block_sites)}")
    print(f"{'model (batch x seq)':<32}{'step':<9}{'variant':<32}{'fp ms':>9}{'quant ms':>10}"
          f"{'ratio':>7}")
    for shape, (config, batch, seq) in SHAPES.items():
        gpt2 = shape.startswith("gpt2")
        label = f"{shape} ({batch}x{seq})"
        fp = GPT2LMHeadModel(config)
        ids = torch.randint(0, config.vocab_size, (batch, seq))
        models = {"fp": fp, **{name: quantized_copy(fp, ids, cache, learned)
                               for name, (_fast, cache, learned) in VARIANTS.items()}}
        kinds = {"forward": forward_step}
        if not gpt2 or args.gpt2_train:
            kinds["train"] = train_step
        for kind, make_step in kinds.items():
            variants = TRAIN_VARIANTS if kind == "train" else FORWARD_VARIANTS
            steps = {name: make_step(models[name], ids) for name in ("fp", *variants)}
            times = median_times(steps, args.gpt2_repeats if gpt2 else args.repeats)
            for name in variants:
                print(f"{label:<32}{kind:<9}{name:<32}{1e3 * times['fp']:>9.1f}"
                      f"{1e3 * times[name]:>10.1f}{times[name] / times['fp']:>7.3f}")


if __name__ == "__main__":
    main()
