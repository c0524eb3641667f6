"""What joint units and downstream targets cost in multi-block weight-only PTQ (method=blockptq):
seconds and peak memory of reconstructing a whole model once per objective, side by side in one
process, against the block-wise baseline (k = 1, m = 0).

SmolLM2-135M's block shape (random weights; ``--blocks`` of its 30 blocks, default 8), W3 with a
range per group of 64 input channels, the FP weights learned through the straight-through estimator
(what experiment=blockptq learns), ``--steps`` Adam steps per unit on ``--samples`` calibration
sequences of ``--seq`` tokens, batch ``--batch-size``, quantized inputs. Every objective runs the
engine's whole walk (FP outputs, targets, L2 before/after, steps), so the seconds are what a run pays
per ``--steps`` steps; objectives run in an order rotated over ``--repeats`` rounds and the median is
printed. Peak memory is measured apart, one fresh process per objective (``--one K,M``): its peak
resident set (Linux ``VmHWM``) while reconstructing above what it held just before (in one long
process the allocator's free pool hides later, smaller peaks); on a GPU ``torch.cuda.max_memory_allocated``.

    python experiments/benchmarks/blockptq_objectives.py [--blocks 8] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time

import torch
from blockwise_step import peak, reset_peak  # benchmarks run as scripts, from this folder
from common import SMOLLM2
from transformers import LlamaForCausalLM

from quadapter.methods.blockwise import capture_block_inputs, reconstruct_blocks, toggled
from quadapter.models.arch import for_model
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim

OBJECTIVES = {"k=1, m=0 (baseline)": (1, 0), "k=2, m=0": (2, 0), "k=4, m=0": (4, 0),
              "k=1, m=1": (1, 1), "k=1, m=2": (1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8, help="blocks of the SmolLM2 shape")
    parser.add_argument("--steps", type=int, default=10, help="Adam steps per unit")
    parser.add_argument("--samples", type=int, default=16, help="calibration sequences")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per step")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (the median is printed)")
    parser.add_argument("--one", help="K,M: run that objective once and print its peak memory (bytes)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = copy.deepcopy(SMOLLM2)
    config.num_hidden_layers = args.blocks
    model = LlamaForCausalLM(config).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    sim = QuantSim(model, *quant_sites(model, None),
                   weight=QuantizerConfig(3, False, "per_group", group_size=64))
    ids = torch.randint(0, config.vocab_size, (args.samples, args.seq))
    sim.calibrate([], progress=False)
    blocks = [b for _, b in for_model(model).block_list(model)]
    with toggled(sim.enable, False):
        inputs, kwargs = capture_block_inputs(model, blocks, ids, args.batch_size)
    start_state = copy.deepcopy(model.state_dict())

    def weights(unit):
        return [{"params": [p.requires_grad_(True) for b in unit for n, p in b.named_parameters()
                            if n.endswith("layer.weight")], "lr": 1e-4}]

    def run(k: int, m: int) -> tuple[float, int]:
        model.load_state_dict(start_state)
        base = reset_peak()
        clock = time.perf_counter()
        reconstruct_blocks(blocks, inputs, kwargs, weights, lambda on: toggled(sim.enable, on), steps=args.steps,
                           batch_size=args.batch_size, unit_size=k, target_offset=m, quantized_inputs=True)
        return time.perf_counter() - clock, peak() - base

    if args.one:
        print(run(*(int(v) for v in args.one.split(",")))[1])
        return
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; SmolLM2 shape, "
          f"{args.blocks} blocks, W3 g64, weights learned, {args.steps} steps per unit, {args.samples} x "
          f"{args.seq} tokens, batch {args.batch_size}; median of {args.repeats}")
    names = list(OBJECTIVES)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds[name].append(run(*OBJECTIVES[name])[0])
    memory = {}
    for name, (k, m) in OBJECTIVES.items():  # a fresh process each: peaks are not hidden by a warm allocator
        flags = [f"--{key}={value}" for key, value in (("blocks", args.blocks), ("steps", args.steps),
                                                       ("samples", args.samples), ("seq", args.seq),
                                                       ("batch-size", args.batch_size))]
        out = subprocess.run([sys.executable, __file__, f"--one={k},{m}", *flags], capture_output=True,
                             text=True, check=True).stdout
        memory[name] = int(out.strip().splitlines()[-1])
    base_s = statistics.median(seconds[names[0]])
    print(f"{'objective':<22}{'units':>6}{'seconds':>9}{'x base':>8}{'peak MiB':>10}{'x base':>8}")
    for name, (k, _) in OBJECTIVES.items():
        s, mem = statistics.median(seconds[name]), memory[name]
        units = -(-args.blocks // k)
        print(f"{name:<22}{units:>6}{s:>9.1f}{s / base_s:>8.2f}{mem / 2**20:>10.0f}"
              f"{mem / memory[names[0]]:>8.2f}")


if __name__ == "__main__":
    main()
