"""What the benchmarks share: interleaved timing and the real-model shapes they time."""

from __future__ import annotations

import gc
import time
from contextlib import nullcontext
from typing import Callable, ContextManager

from transformers import LlamaConfig

# SmolLM2-135M's shape (config.json of HuggingFaceTB/SmolLM2-135M): 30 blocks of width 576,
# 9 query / 3 key-value heads, MLP 1536, vocabulary 49,152, tied embeddings.
SMOLLM2 = LlamaConfig(num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0)


def interleaved_times(steps: dict[str, Callable[[], object]], repeats: int,
                      around: Callable[[str], ContextManager] = lambda name: nullcontext(),
                      ) -> dict[str, list[float]]:
    """Seconds of every step in each of ``repeats`` rounds, after one warm-up round (which also
    fills caches). Each round runs every step once, in an order rotated per round, so drift hits
    all alike; ``around(name)`` wraps a step (e.g. a patched code path). The garbage collector is
    off while timing, as in ``timeit``: its pauses would land on whichever step triggers them."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    gc.disable()
    try:
        for i in range(repeats + 1):
            for name in names[i % len(names):] + names[:i % len(names)]:
                with around(name):
                    start = time.perf_counter()
                    steps[name]()
                    if i:
                        times[name].append(time.perf_counter() - start)
            gc.collect()
    finally:
        gc.enable()
    return times
