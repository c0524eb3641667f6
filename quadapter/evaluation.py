"""The one perplexity evaluation: strided sliding windows over a token sequence.

As in Hugging Face's "Perplexity of fixed-length models" guide: windows of ``context`` tokens start
every ``stride`` tokens, and only the tokens a window adds beyond the previous window's end are
scored, so every token is scored at most once, with between ``context - stride`` and
``context - 1`` tokens of history. With ``stride < context`` every token after the first is scored;
with ``stride == context`` (disjoint windows) each window's first token has no history and is not.
Windows of equal length are batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics.text import Perplexity

IGNORE = -100


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    score_from: int  # first absolute position whose token is scored


def strided_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Windows covering ``n_tokens``; each token is scored by at most one of them."""
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context ({context}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {n_tokens}")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


@torch.inference_mode()
def perplexity(model: nn.Module, ids: torch.Tensor, context: int, stride: int,
               batch_size: int = 8) -> tuple[float, int]:
    """Perplexity of ``model`` on the token sequence ``ids`` and the number of tokens scored."""
    device = next(model.parameters()).device
    metric = Perplexity(ignore_index=IGNORE).to(device)
    windows = strided_windows(len(ids), context, stride)
    by_length: dict[int, list[Window]] = {}
    for w in windows:
        by_length.setdefault(w.end - w.begin, []).append(w)
    scored = 0
    for group in by_length.values():
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            inputs = torch.stack([ids[w.begin:w.end] for w in batch]).to(device)
            targets = inputs[:, 1:].clone()
            for row, w in enumerate(batch):  # positions already scored by the previous window
                targets[row, :w.score_from - w.begin - 1] = IGNORE
            logits = model(inputs).logits[:, :-1].float()
            metric.update(logits, targets)
            scored += int((targets != IGNORE).sum())
    return float(metric.compute()), scored
