"""Block-wise reconstruction: fit the trainable parameters of a unit of consecutive blocks so that
its quantized output matches the full-precision one (Quadapter phase 1; multi-block PTQ later).

The engine walks the blocks in order holding only one unit's calibration inputs: the full-precision
outputs of unit k are the inputs of unit k+1, so every FP activation is computed once. A unit may
span several blocks (``unit_size``) and its target may lie ``target_offset`` FP blocks further on:
then the quantized unit's output is pushed through those blocks (in full precision, their
parameters frozen) before the L2 loss — the downstream objective of multi-block PTQ fine-tuning.
Units see the FP activations (default) or the quantized model's (``quantized_inputs``).
Activations live in memory or, with ``offload_dir``, in a file-backed tensor.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from quadapter.errors import TrainingError
from quadapter.peak_memory import PeakMemory

log = logging.getLogger(__name__)


class BlockInputs:
    """Calibration activations of one block boundary: [N, T, D], in memory or in a file."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, offload: Path | None):
        if offload is None:
            self.data = torch.empty(shape, dtype=dtype)
        else:
            offload.parent.mkdir(parents=True, exist_ok=True)
            size = int(torch.Size(shape).numel())
            self.data = torch.from_file(str(offload), shared=True, size=size, dtype=dtype).view(shape)


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def capture_block_inputs(model: nn.Module, blocks: Sequence[nn.Module], batches: Tensor,
                         batch_size: int, offload_dir: Path | None = None,
                         ) -> tuple[Tensor, dict[str, Any]]:
    """Inputs of ``blocks[0]`` (and the keyword arguments the model passes its blocks)."""
    first = blocks[0]
    captured: dict[str, Any] = {}
    inputs: BlockInputs | None = None

    class _Stop(Exception):
        pass

    def hook(module, args, kwargs):
        captured["x"], captured["kwargs"] = (args[0] if args else kwargs["hidden_states"]), kwargs
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, len(batches), batch_size):
            try:
                model(batches[i:i + batch_size].to(next(model.parameters()).device), use_cache=False)
            except _Stop:
                pass
            x = captured["x"].detach().cpu()
            if inputs is None:
                shape = (len(batches), *x.shape[1:])
                inputs = BlockInputs(shape, x.dtype, offload_dir / "block_inputs.bin" if offload_dir else None)
            inputs.data[i:i + len(x)] = x
    finally:
        handle.remove()
    kwargs = {k: v for k, v in captured["kwargs"].items() if k != "hidden_states"}
    return inputs.data, kwargs


def _through(blocks: Sequence[nn.Module], x: Tensor, kwargs: dict[str, Any]) -> Tensor:
    """One batch through ``blocks`` in turn."""
    for block in blocks:
        x = _block_output(block(x, **kwargs))
    return x


def run_blocks(blocks: Sequence[nn.Module], inputs: Tensor, kwargs: dict[str, Any], batch_size: int,
               out: Tensor | None = None) -> Tensor:
    """``blocks`` applied in turn to ``inputs`` [N, T, D] in batches, results in ``out`` (default:
    a new CPU tensor like ``inputs``). Gradients as the caller's mode says."""
    out = torch.empty_like(inputs) if out is None else out
    device = next(blocks[0].parameters()).device
    for i in range(0, len(inputs), batch_size):
        out[i:i + batch_size] = _through(blocks, inputs[i:i + batch_size].to(device), kwargs).detach().cpu()
    return out


def reconstruct_blocks(
    blocks: Sequence[nn.Module],
    inputs: Tensor,
    block_kwargs: dict[str, Any],
    trainable: Callable[[Sequence[nn.Module]], list[dict]],
    quantized: Callable[[bool], Any],
    steps: int,
    batch_size: int,
    unit_size: int = 1,
    target_offset: int = 0,
    seed: int = 0,
    offload_dir: Path | None = None,
    on_unit_end: Callable[[int, dict[str, float]], None] | None = None,
    penalty: Callable[[Sequence[nn.Module], float], Tensor | None] | None = None,
    finish: Callable[[Sequence[nn.Module]], None] | None = None,
    quantized_inputs: bool = False,
    revert_if_worse: bool = False,
) -> list[dict[str, float]]:
    """Fit each unit of ``unit_size`` blocks; returns per unit the L2 before/after, seconds and
    peak memory.

    Args:
        trainable: the parameter groups (Adam dicts with ``lr``) of a unit's blocks; called once
            per unit, after its starting L2 is measured (it may attach what learns).
        quantized: context-manager factory ``quantized(enabled)`` switching fake quantization.
        penalty: ``penalty(unit, progress)``, a term added to the L2 being minimized at a share
            ``progress`` of the steps (``None``: nothing), e.g. AdaRound's regulariser; with one,
            the L2 minimized is divided by the unit's starting L2, so that the penalty's weight
            means the same in every block (hidden-state scales grow with depth).
        finish: called on a unit after its steps, before its final L2 is measured (e.g. hardening
            a learned rounding).
        quantized_inputs: feed every unit the quantized model's activations (the outputs of the
            units fitted before it) instead of the full-precision ones; targets stay FP.
        revert_if_worse: a unit that ends with a larger L2 than it started with is put back as it
            was before its steps (then finished), and its row says ``reverted``.
    """
    device = next(blocks[0].parameters()).device
    gen = torch.Generator().manual_seed(seed)
    kwargs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in block_kwargs.items()}
    n = len(inputs)

    def predict(mods_q, mods_after, x) -> Tensor:
        """The quantized unit's output, pushed through the target's FP blocks."""
        with quantized(True):
            h = _through(mods_q, x, kwargs)
        with quantized(False):
            return _through(mods_after, h, kwargs)

    report = []
    x_fp = x_q = inputs
    for start in range(0, len(blocks), unit_size):
        clock = time.perf_counter()
        unit = blocks[start:start + unit_size]
        after = blocks[start + unit_size:start + unit_size + target_offset]
        offload = (offload_dir / f"unit{start}") if offload_dir else None
        peak = PeakMemory(device)
        with peak:
            unit_out = BlockInputs(tuple(x_fp.shape), x_fp.dtype, offload and offload / "out.bin").data
            with torch.no_grad(), quantized(False):  # FP output of the unit = next unit's FP inputs
                run_blocks(unit, x_fp, kwargs, batch_size, unit_out)
            target = unit_out
            if after:
                target = BlockInputs(tuple(x_fp.shape), x_fp.dtype, offload and offload / "target.bin").data
                with torch.no_grad(), quantized(False):
                    run_blocks(after, unit_out, kwargs, batch_size, target)

            def mean_l2(unit=unit, after=after, x_q=x_q, target=target) -> float:  # this unit's tensors
                with torch.no_grad():
                    return sum(float((predict(unit, after, x_q[i:i + batch_size].to(device))
                                      - target[i:i + batch_size].to(device)).pow(2).mean())
                               * len(x_q[i:i + batch_size]) for i in range(0, n, batch_size)) / n

            before = mean_l2()
            groups = trainable(unit)
            params = [p for g in groups for p in g["params"]]
            saved = [copy.deepcopy(m.state_dict()) for m in unit] if revert_if_worse else None
            if params and steps > 0:
                norm = max(before, 1e-12) if penalty is not None else 1.0  # a penalty's weight: relative to L2 at start
                _fit(unit, after, groups, steps, batch_size, n, gen, device, start,
                     lambda x, y, unit=unit, after=after, norm=norm: (predict(unit, after, x) - y).pow(2).mean() / norm,
                     x_q, target, penalty)
            if finish is not None:
                finish(unit)
            row = {"unit": start, "blocks": len(unit), "target_offset": len(after),
                   "l2_before": before, "l2_after": mean_l2()}
            if revert_if_worse:
                row["reverted"] = row["l2_after"] > before
                if row["reverted"]:
                    for m, state in zip(unit, saved):
                        m.load_state_dict(state)
                    if finish is not None:
                        finish(unit)
                    row["l2_after"] = mean_l2()
            next_q = unit_out
            if quantized_inputs:
                next_q = BlockInputs(tuple(x_q.shape), x_q.dtype, offload and offload / "q_out.bin").data
                with torch.no_grad(), quantized(True):
                    run_blocks(unit, x_q, kwargs, batch_size, next_q)
        row |= {"seconds": round(time.perf_counter() - clock, 3), "peak_memory_mb": peak.megabytes,
                "memory": peak.kind}
        report.append(row)
        log.info("block-wise unit %d: L2 %.5g -> %.5g (%.1f s, peak %.0f MB)", start, row["l2_before"],
                 row["l2_after"], row["seconds"], row["peak_memory_mb"])
        if on_unit_end is not None:
            on_unit_end(start, row)
        x_fp, x_q = unit_out, next_q
    return report


def _fit(unit, after, groups, steps, batch_size, n, gen, device, start, l2, x_in, target, penalty) -> None:
    """Adam with cosine decay on random batches of the unit's inputs; ``after`` frozen meanwhile."""
    frozen_after = [p for m in after for p in m.parameters() if p.requires_grad]
    for p in frozen_after:
        p.requires_grad_(False)
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    try:
        for step in tqdm(range(steps), desc=f"blocks {start}-{start + len(unit) - 1}", leave=False):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            loss = l2(x_in[idx].to(device), target[idx].to(device))
            extra = penalty(unit, step / steps) if penalty is not None else None
            if extra is not None:
                loss = loss + extra
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite block-wise loss in blocks starting at {start}: lower "
                                    f"the method's block-wise lr or raise the bit-widths")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        opt.zero_grad(set_to_none=True)  # a finished unit keeps no gradients (a model's worth over all units)
        for p in frozen_after:
            p.requires_grad_(True)


@contextmanager
def toggled(enable: Callable[[bool], Any], enabled: bool) -> Iterator[None]:
    """Switch something on or off for a block, restoring 'on' afterwards."""
    enable(enabled)
    try:
        yield
    finally:
        enable(True)
