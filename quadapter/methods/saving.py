"""Saving a quantized model so that others can load it without quadapter's quantizers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from quadapter.quant.sim import QuantSim

QUANTIZED_DIR = "quantized"  # <run dir>/quantized: a quantizing method's model (method.save_quantized=true)
FOLDED_DIR = "folded"  # <run dir>/folded: a quadapter run's folded model (method.save_folded=true)
ENCODINGS_FILE = "quantizer_encodings.json"

if TYPE_CHECKING:
    from quadapter.methods import RunContext


def save_quantized(sim: QuantSim, model: nn.Module, tokenizer, out: Path) -> Path:
    """The model as a plain HF checkpoint (``save_pretrained``, original keys) plus every quantizer's
    encodings (``ENCODINGS_FILE``: the grid — bits, scale, zero point — each site uses).

    Quadapter saves its folded FP model this way; weight-only methods whose weights end on their
    grid (gptq, blockptq) save weights that re-quantize to themselves with those encodings.
    """
    model.save_pretrained(str(out), state_dict=sim.original_state_dict())
    tokenizer.save_pretrained(str(out))
    encodings = {name: q.encodings() for name, q in sim.quantizers().items()}
    (out / ENCODINGS_FILE).write_text(json.dumps(encodings, indent=1))
    return out


def save_if_asked(ctx: RunContext, sim: QuantSim) -> None:
    """``method.save_quantized=true``: the quantized model under ``<run dir>/quantized``, its path
    in results.json (``quantization.saved``)."""
    if ctx.cfg.method.get("save_quantized"):
        path = save_quantized(sim, sim.model, ctx.tokenizer, ctx.run_dir / QUANTIZED_DIR)
        ctx.summary["quantization"]["saved"] = str(path)
