"""Saving a quantized model so that others can load it without quadapter's quantizers."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from quadapter.quant.sim import QuantSim


def save_quantized(sim: QuantSim, model: nn.Module, tokenizer, out: Path) -> Path:
    """The model as a plain HF checkpoint (``save_pretrained``, original keys) plus every quantizer's
    encodings (``quantizer_encodings.json``: the grid — bits, scale, zero point — each site uses).

    Quadapter saves its folded FP model this way; weight-only methods whose weights end on their
    grid (gptq, blockptq) save weights that re-quantize to themselves with those encodings.
    """
    model.save_pretrained(str(out), state_dict=sim.original_state_dict())
    tokenizer.save_pretrained(str(out))
    encodings = {name: q.encodings() for name, q in sim.quantizers().items()}
    (out / "quantizer_encodings.json").write_text(json.dumps(encodings, indent=1))
    return out
