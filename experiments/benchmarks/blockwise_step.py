"""Cost of one block-wise reconstruction step (Quadapter's phase 1) on one block: time per step and
peak memory, at GPT-2 small's and SmolLM2-135M's shapes.

The step is the engine's own (``methods.blockwise.reconstruct_blocks``: quantized block forward,
L2 to the FP output, backward to every α, Adam): the time per step is the difference between a
run of ``--steps`` steps and a run of none, divided by ``--steps``, so the engine's fixed work
(FP outputs, L2 before and after) cancels. Peak memory is the process's peak resident set
(Linux ``VmHWM``, reset before each run through ``/proc/self/clear_refs``) above what it held
before the run, on a GPU ``torch.cuda.max_memory_allocated``. W8A8 (weights per channel,
activations per tensor), α at every scale region of the family. Random weights.

    python experiments/benchmarks/blockwise_step.py [--steps 10] [--samples 32] [--seq 512]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import SMOLLM2  # benchmarks run as scripts, from this folder
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from quadapter.methods.blockwise import capture_block_inputs, reconstruct_blocks, toggled
from quadapter.models.arch import for_model
from quadapter.models.regions import attach_scales
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim


SHAPES = {
    "gpt2-small 12x768": lambda: GPT2LMHeadModel(GPT2Config()),
    "smollm2-135m 30x576, GQA 9/3": lambda: LlamaForCausalLM(SMOLLM2),
}
STATUS = Path("/proc/self/status")


def reset_peak() -> int:
    """Reset the peak resident set; returns the current one in bytes (0 where Linux' /proc is absent)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return 0


def peak() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        return 0


def _status_kib(key: str) -> int:
    line = next(x for x in STATUS.read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])


def one_block_run(model, sim, scales, block, inputs, kwargs, steps: int, batch_size: int) -> tuple[float, int]:
    """Seconds and peak extra bytes of reconstructing ``block`` for ``steps`` steps."""
    prefix = for_model(model).block_list(model)[0][0] + "."
    alphas = [p for key, s in scales.items() if key.startswith(prefix) for p in s.parameters()]
    base = reset_peak()
    start = time.perf_counter()
    reconstruct_blocks([block], inputs, kwargs, lambda unit: [{"params": alphas, "lr": 1e-3}],
                       lambda on: toggled(sim.enable, on), steps=steps, batch_size=batch_size)
    return time.perf_counter() - start, peak() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed reconstruction steps")
    parser.add_argument("--samples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; one block, "
          f"{args.samples} calibration sequences of {args.seq} tokens, batch {args.batch_size}, "
          f"W8A8, alpha at every region")
    print(f"{'model':<32}{'ms/step':>9}{'fixed s':>9}{'peak MiB':>10}{'inputs MiB':>12}")
    for name, make in SHAPES.items():
        model = make().eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        sim = QuantSim(model, *quant_sites(model, None), weight=QuantizerConfig(8, True, "per_channel"),
                       act=QuantizerConfig(8))
        scales = attach_scales(sim, model, list(for_model(model).regions))
        for s in scales.values():
            s.to(device).requires_grad_(True)
        ids = torch.randint(0, model.config.vocab_size, (args.samples, args.seq))
        sim.calibrate([ids[:args.batch_size].to(device)], progress=False)
        blocks = [b for _, b in for_model(model).block_list(model)]
        with toggled(sim.enable, False):
            inputs, kwargs = capture_block_inputs(model, blocks, ids, args.batch_size)
        fixed, _ = one_block_run(model, sim, scales, blocks[0], inputs, kwargs, 0, args.batch_size)
        total, mem = one_block_run(model, sim, scales, blocks[0], inputs, kwargs, args.steps, args.batch_size)
        per_step = (total - fixed) / args.steps
        print(f"{name:<32}{1e3 * per_step:>9.0f}{fixed:>9.2f}{mem / 2**20:>10.0f}"
              f"{inputs.numel() * inputs.element_size() / 2**20:>12.0f}")


if __name__ == "__main__":
    main()
