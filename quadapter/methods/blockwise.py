"""Block-wise reconstruction: fit the trainable parameters of a unit of consecutive blocks so that
its quantized output matches the full-precision one (Quadapter phase 1; multi-block PTQ later).

The engine walks the blocks in order holding only one unit's calibration inputs: the full-precision
outputs of unit k are the inputs of unit k+1, so every FP activation is computed once. A unit may
span several blocks (``unit_size``) and its target may lie ``target_offset`` FP blocks further on:
then the quantized unit's output is pushed through those blocks (in full precision, without
gradients to them) before the L2 loss — the downstream objective of multi-block PTQ fine-tuning.
Activations live in memory or, with ``offload_dir``, in a file-backed tensor.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from quadapter.errors import TrainingError

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
) -> list[dict[str, float]]:
    """Fit each unit of ``unit_size`` blocks; returns per-unit L2 before/after.

    Args:
        trainable: the parameter groups (AdamW dicts with ``lr``) of a unit's blocks.
        quantized: context-manager factory ``quantized(enabled)`` switching fake quantization.
    """
    device = next(blocks[0].parameters()).device
    gen = torch.Generator().manual_seed(seed)
    kwargs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in block_kwargs.items()}
    n = len(inputs)

    def run(mods: Sequence[nn.Module], x: Tensor) -> Tensor:
        for m in mods:
            x = _block_output(m(x, **kwargs))
        return x

    @torch.no_grad()
    def fp_through(mods: Sequence[nn.Module], x_all: Tensor, out: Tensor) -> None:
        with quantized(False):
            for i in range(0, n, batch_size):
                out[i:i + batch_size] = run(mods, x_all[i:i + batch_size].to(device)).cpu()

    def l2(mods_q, mods_after, x, y) -> Tensor:
        with quantized(True):
            h = run(mods_q, x)
        return (run(mods_after, h) - y).pow(2).mean()

    report = []
    x_in = inputs
    for start in range(0, len(blocks), unit_size):
        unit = blocks[start:start + unit_size]
        after = blocks[start + unit_size:start + unit_size + target_offset]
        offload = (offload_dir / f"unit{start}") if offload_dir else None
        unit_out = BlockInputs(tuple(x_in.shape), x_in.dtype, offload and offload / "out.bin").data
        fp_through(unit, x_in, unit_out)  # FP output of the unit = next unit's inputs
        target = unit_out
        if after:
            target = BlockInputs(tuple(x_in.shape), x_in.dtype, offload and offload / "target.bin").data
            fp_through(after, unit_out, target)
        groups = trainable(unit)
        params = [p for g in groups for p in g["params"]]

        def mean_l2(unit=unit, after=after, x_in=x_in, target=target) -> float:  # this unit's tensors
            with torch.no_grad():
                return sum(float(l2(unit, after, x_in[i:i + batch_size].to(device),
                                    target[i:i + batch_size].to(device))) * len(x_in[i:i + batch_size])
                           for i in range(0, n, batch_size)) / n

        before = mean_l2()
        if params and steps > 0:
            frozen_after = [p for m in after for p in m.parameters() if p.requires_grad]
            for p in frozen_after:
                p.requires_grad_(False)
            opt = torch.optim.Adam(groups)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            for _ in tqdm(range(steps), desc=f"blocks {start}-{start + len(unit) - 1}", leave=False):
                idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
                loss = l2(unit, after, x_in[idx].to(device), target[idx].to(device))
                if not torch.isfinite(loss):
                    raise TrainingError(f"non-finite block-wise L2 in blocks starting at {start}: lower "
                                        f"method.blockwise.lr or raise the bit-widths")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            for p in frozen_after:
                p.requires_grad_(True)
        row = {"unit": start, "blocks": len(unit), "l2_before": before, "l2_after": mean_l2()}
        report.append(row)
        log.info("block-wise unit %d: L2 %.5g -> %.5g", start, row["l2_before"], row["l2_after"])
        if on_unit_end is not None:
            on_unit_end(start, row)
        x_in = unit_out
    return report


@contextmanager
def toggled(enable: Callable[[bool], Any], enabled: bool) -> Iterator[None]:
    """Switch something on or off for a block, restoring 'on' afterwards."""
    enable(enabled)
    try:
        yield
    finally:
        enable(True)
