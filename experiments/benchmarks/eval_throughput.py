"""Evaluator throughput against a bare forward loop over the same windows, side by side.

The evaluator adds window bookkeeping, target masking and torchmetrics' Perplexity on top of the
forward passes; this prints how much that costs. Random weights: speed does not depend on them.

    python experiments/benchmarks/eval_throughput.py [--tokens 16384] [--gpt2-tokens 4096]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from quadapter.evaluation import perplexity, strided_windows

SHAPES = {  # name: (config, context)
    "tiny (4x192, 4k vocab)": (GPT2Config(n_layer=4, n_embd=192, n_head=4, vocab_size=4096, n_positions=128), 128),
    "gpt2-small shape (12x768, 50k vocab)": (GPT2Config(), 1024),
}


@torch.inference_mode()
def bare_forward(model, ids, context, stride, batch_size):
    windows = strided_windows(len(ids), context, stride)
    full = [w for w in windows if w.end - w.begin == context]
    rest = [w for w in windows if w.end - w.begin != context]
    for group in (full, rest):
        for i in range(0, len(group), batch_size):
            model(torch.stack([ids[w.begin:w.end] for w in group[i:i + batch_size]]))


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens scored on the tiny shape")
    parser.add_argument("--gpt2-tokens", type=int, default=4096, help="tokens scored on the GPT-2 shape")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<38}{'stride':>7}{'bare tok/s':>12}{'eval tok/s':>12}{'eval/bare':>10}")
    for (name, (config, context)), n in zip(SHAPES.items(), (args.tokens, args.gpt2_tokens)):
        model = GPT2LMHeadModel(config).eval()
        ids = torch.randint(0, config.vocab_size, (n,))
        for stride in (context, context // 2):
            bare = timed(lambda: bare_forward(model, ids, context, stride, args.batch_size), args.repeats)
            ev = timed(lambda: perplexity(model, ids, context, stride, args.batch_size), args.repeats)
            print(f"{name:<38}{stride:>7}{n / bare:>12.0f}{n / ev:>12.0f}{bare / ev:>10.3f}")


if __name__ == "__main__":
    main()
