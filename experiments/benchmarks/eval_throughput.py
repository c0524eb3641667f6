"""Evaluator throughput against a bare forward loop over the same windows, side by side; and, at
SmolLM2-135M's shape, what W8A8 fake quantization and an unfolded Quadapter cost in evaluation.

The bare loop runs the model on every window and computes logits for every position, which is
what a naive perplexity loop pays before it even scores a token. The evaluator adds batching by
scored positions, the LM head only where a token is scored (``logits_to_keep``) and the loss, so
with overlapping windows (stride < context) it should beat the bare loop. Each time is the best
of rounds that interleave the variants (rotating their order), so drift hits all alike; the best,
as ``timeit`` advises, because on a shared machine single runs of the same code vary by ±20%.
Random weights: speed does not depend on them.

    python experiments/benchmarks/eval_throughput.py [--repeats 5] [--skip-llama]
"""

from __future__ import annotations

import argparse
import copy
from typing import Callable

import torch
from common import SMOLLM2, interleaved_times  # benchmarks run as scripts, from this folder
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from quadapter.evaluation import perplexity, strided_windows
from quadapter.models.arch import for_model
from quadapter.models.regions import attach_scales, fold_scales
from quadapter.models.sites import quant_sites
from quadapter.quant import QuantizerConfig, QuantSim

SHAPES = {  # name: (model factory, context, tokens scored)
    "tiny 4x192, 4k vocab": (lambda: GPT2LMHeadModel(GPT2Config(
        n_layer=4, n_embd=192, n_head=4, vocab_size=4096, n_positions=128)), 128, 16384),
    "gpt2-small 12x768, 50k": (lambda: GPT2LMHeadModel(GPT2Config()), 1024, 2048),
    "smollm2-135m 30x576, 49k": (lambda: LlamaForCausalLM(SMOLLM2), 512, 2048),
}
W8A8 = {"weight": QuantizerConfig(8, True, "per_channel"), "act": QuantizerConfig(8)}


@torch.inference_mode()
def bare_forward(model, ids, context, stride, batch_size):
    windows = strided_windows(len(ids), context, stride)
    by_length: dict[int, list] = {}
    for w in windows:
        by_length.setdefault(w.end - w.begin, []).append(w)
    for group in by_length.values():
        for i in range(0, len(group), batch_size):
            model(torch.stack([ids[w.begin:w.end] for w in group[i:i + batch_size]]))


def best_times(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fewest seconds of each step over ``repeats`` interleaved rounds."""
    return {name: min(t) for name, t in interleaved_times(steps, repeats).items()}


def quantized(model, ids, context, quadapter: bool):
    """A W8A8 copy of ``model``; with ``quadapter``, every region of its family gets a random α
    (returned, so the caller can fold it)."""
    model = copy.deepcopy(model)
    sim = QuantSim(model, *quant_sites(model, None), **W8A8)
    scales = {}
    if quadapter:
        scales = attach_scales(sim, model, list(for_model(model).regions))
        with torch.no_grad():
            for s in scales.values():
                s.log_alpha.uniform_(-0.5, 0.5)
    sim.calibrate([ids[:2 * context].view(2, context)], progress=False)
    return model, sim, scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per comparison")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-llama", action="store_true", help="leave out the SmolLM2 shape")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch_size}, "
          f"best of {args.repeats} interleaved rounds")
    print(f"\n{'model':<28}{'context':>8}{'stride':>7}{'bare tok/s':>12}{'eval tok/s':>12}{'eval/bare':>10}")
    llama = None
    for name, (make, context, n) in SHAPES.items():
        if args.skip_llama and name.startswith("smollm2"):
            continue
        model = make().eval()
        ids = torch.randint(0, model.config.vocab_size, (n,))
        for stride in (context, context // 2):
            times = best_times({
                "bare": lambda: bare_forward(model, ids, context, stride, args.batch_size),
                "eval": lambda: perplexity(model, ids, context, stride, args.batch_size),
            }, args.repeats)
            print(f"{name:<28}{context:>8}{stride:>7}{n / times['bare']:>12.0f}{n / times['eval']:>12.0f}"
                  f"{times['bare'] / times['eval']:>10.3f}")
        if name.startswith("smollm2"):
            llama = (name, model, ids, context)
    if llama is None:
        return
    name, fp, ids, context = llama
    w8a8, _, _ = quantized(fp, ids, context, quadapter=False)
    unfolded, sim, scales = quantized(fp, ids, context, quadapter=True)
    folded, folded_sim, folded_scales = quantized(fp, ids, context, quadapter=True)
    fold_scales(folded_sim, folded, folded_scales)
    models = {"FP": fp, "W8A8": w8a8, "Quadapter, alpha attached": unfolded, "Quadapter, folded": folded}
    stride = context // 2
    times = best_times({k: (lambda m=m: perplexity(m, ids, context, stride, args.batch_size))
                          for k, m in models.items()}, args.repeats)
    print(f"\n{name}: evaluator, context {context}, stride {stride}, W8A8 = weights per channel "
          "symmetric, activations per tensor, every block linear")
    print(f"{'model':<28}{'tok/s':>8}{'time/FP':>9}{'time/W8A8':>11}")
    for k in models:
        print(f"{k:<28}{len(ids) / times[k]:>8.0f}{times[k] / times['FP']:>9.3f}{times[k] / times['W8A8']:>11.3f}")


if __name__ == "__main__":
    main()
