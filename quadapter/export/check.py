"""Closing the loop: onnxruntime runs the exported file on held-out data and must agree with the
fake-quantized PyTorch model it came from.

Two measurements on the same fixed held-out slice: the logits of its first batch, compared element
by element, and the task's own score of the whole slice, computed for both by the run's evaluator —
a causal LM's perplexity on the first ``tokens`` tokens of a set (the run's context and stride,
within ``PPL_RTOL`` relative), a GLUE classifier's dev metrics on the first ``examples`` dev examples
(within ``METRIC_ATOL`` points), and the logits' mean absolute difference within ``LOGITS_MEAN_ATOL``
(the maximum is recorded, not bounded: one flipped code moves a few logits by a grid step's worth).
The two models cannot be bit-identical: onnxruntime quantizes with ``x / s`` where PyTorch multiplies
by ``1/s``, and its matmuls sum in another order, so an activation a hair from a rounding boundary
lands one grid step apart now and then.

A quantized network can amplify such flips: each moves an activation by a whole grid step, which
moves later activations across later boundaries, and with coarse grids (a per-tensor range stretched
by outlier channels) the logits of two correct implementations drift apart. The check measures that
property of the model itself, its *noise floor*: the same PyTorch model with a relative noise of
``NOISE`` (a few float32 ulps, the size of a matmul's reassociation error) added at every activation
quantizer's input, scored like the runtime. A runtime difference within ``FLOOR_FACTOR`` times the
noise floor (logits and scores; one noise draw is itself a random sample) is what any second
implementation of that network shows (``within_noise_floor``); a larger one is an export error.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from quadapter.evaluation import perplexity
from quadapter.export.runtime import RuntimeModel
from quadapter.quant.quantizer import FakeQuantizer

PPL_RTOL = 1e-3  # |ppl_onnxruntime − ppl_pytorch| / ppl_pytorch
METRIC_ATOL = 0.5  # GLUE: |metric_onnxruntime − metric_pytorch| in points (percent)
LOGITS_MEAN_ATOL = 1e-2  # mean |logit_onnxruntime − logit_pytorch| over the first batch
NOISE = 2.0**-20  # ≈ 1e-6 relative: the float32 rounding noise the noise floor adds at each quantizer input
FLOOR_FACTOR = 3.0  # a runtime difference up to 3x the noise floor's is the model's own, not the export's


@contextmanager
def float_noise(model: nn.Module, relative: float, seed: int = 0) -> Iterator[int]:
    """``x·(1 + relative·N(0, 1))`` at the input of every enabled activation quantizer of ``model``
    (QuantSim's input and output quantizers); yields how many there are."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(module, args):
        x = args[0]
        return (x * (1 + relative * torch.randn(x.shape, generator=generator, dtype=x.dtype)), *args[1:])

    quantizers = [m for name, m in model.named_modules() if isinstance(m, FakeQuantizer) and m.enabled
                  and name.endswith(("input_quantizer", "output_quantizer"))]
    hooks = [q.register_forward_pre_hook(perturb) for q in quantizers]
    try:
        yield len(quantizers)
    finally:
        for hook in hooks:
            hook.remove()


@dataclass(frozen=True)
class CheckData:
    """What the check scores, in the task's terms: ``score(model)`` runs the task's own evaluator on
    a fixed held-out slice, ``first`` is the first batch of it (the logits compared element by
    element), ``tolerance`` each score's allowed difference (``relative`` or ``absolute``)."""

    score: Callable[[nn.Module], dict[str, float]]
    first: dict[str, Tensor]
    tolerance: dict[str, tuple[str, float]]
    info: dict[str, Any]


def lm_check_data(ids: Tensor, context: int, stride: int, batch_size: int, info: dict[str, Any]) -> CheckData:
    """Perplexity of a token slice (``quadapter.evaluation.perplexity``), within ``PPL_RTOL`` relative."""
    def score(model: nn.Module) -> dict[str, float]:
        ppl, scored = perplexity(model, ids, context, stride, batch_size)
        return {"ppl": ppl, "scored_tokens": scored}

    return CheckData(score, {"input_ids": ids[:context].unsqueeze(0)}, {"ppl": ("relative", PPL_RTOL)}, info)


def glue_check_data(task, examples: int, info: dict[str, Any]) -> CheckData:
    """The dev metrics (``quadapter.tasks.glue.evaluate``) of the first ``examples`` dev examples, each
    within ``METRIC_ATOL`` points."""
    from quadapter.tasks import glue

    dev = task.dev.subset(list(range(min(examples, len(task.dev)))))
    batch_size = task.cfg.eval.batch_size

    def score(model: nn.Module) -> dict[str, float]:
        return glue.evaluate(model, dev, task.tokenizer, task.spec, batch_size)

    first, _ = next(glue.batches(dev, task.tokenizer, batch_size))
    return CheckData(score, first, {m: ("absolute", METRIC_ATOL) for m in task.spec.metrics},
                     {**info, "examples": len(dev)})


def _difference(a: float, b: float, kind: str) -> float:
    return abs(a - b) / abs(b) if kind == "relative" else abs(a - b)


@torch.inference_mode()
def check_export(reference: nn.Module, onnx_path: Path, data: CheckData) -> dict[str, Any]:
    """Compare onnxruntime's run of ``onnx_path`` with ``reference`` on ``data``; what check.json holds."""
    runtime = RuntimeModel(onnx_path)
    expected, got = reference(**data.first).logits.float(), runtime(**data.first).logits
    diff = (expected - got).abs()
    seconds = {}
    scores = {}
    for name, model in (("pytorch_fake_quant", reference), ("onnxruntime", runtime)):
        start = time.perf_counter()
        scores[name] = data.score(model)
        seconds[name] = round(time.perf_counter() - start, 3)
    differences = {k: _difference(scores["onnxruntime"][k], scores["pytorch_fake_quant"][k], kind)
                   for k, (kind, _) in data.tolerance.items()}
    logits = {"shape": list(expected.shape), "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
              "max_abs_logit": expected.abs().max().item(), "argmax_agreement": _agreement(expected, got)}
    with float_noise(reference, NOISE) as sites:
        noisy = reference(**data.first).logits.float()
        noisy_scores = data.score(reference)
    noise_floor = {"relative_noise": NOISE, "sites": sites,
                   "logits_mean_abs_diff": (noisy - expected).abs().mean().item(),
                   "argmax_agreement": _agreement(expected, noisy), "scores": noisy_scores,
                   "differences": {k: _difference(noisy_scores[k], scores["pytorch_fake_quant"][k], kind)
                                   for k, (kind, _) in data.tolerance.items()}}
    passed = (logits["mean_abs_diff"] <= LOGITS_MEAN_ATOL
              and all(differences[k] <= tol for k, (_, tol) in data.tolerance.items()))
    within_floor = (
        logits["mean_abs_diff"] <= max(LOGITS_MEAN_ATOL, FLOOR_FACTOR * noise_floor["logits_mean_abs_diff"])
        and all(differences[k] <= max(tol, FLOOR_FACTOR * noise_floor["differences"][k])
                for k, (_, tol) in data.tolerance.items()))
    return {
        "passed": passed,
        "within_noise_floor": within_floor,
        "data": data.info,
        "tolerance": {"scores": {k: {kind: tol} for k, (kind, tol) in data.tolerance.items()},
                      "logits_mean_atol": LOGITS_MEAN_ATOL, "floor_factor": FLOOR_FACTOR},
        "scores": {**scores, "differences": differences, "seconds": seconds},
        "logits": logits,
        "noise_floor": noise_floor,
    }


def _agreement(a: Tensor, b: Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()
