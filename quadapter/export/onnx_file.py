"""Writing a (QDQ-form or float) causal LM as an ONNX file with ``torch.onnx``, checked by ``onnx``.

The file's inputs are the task's model inputs, int64 ``[batch, sequence]`` (both dynamic, the
sequence up to the model's context): ``input_ids`` for a causal LM, the tokenizer's ``input_ids``,
``attention_mask`` (and ``token_type_ids``) for a classifier; its one output is ``logits`` float32
(``[batch, sequence, vocab]`` or ``[batch, labels]``). The dynamo exporter (``torch.export`` + onnxscript) traces the model;
quadapter's quantizer ops are translated to ``QuantizeLinear``/``DequantizeLinear`` (``qdq``).
"""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from quadapter.export.qdq import TRANSLATIONS, ExportError

OPSET = 21  # DequantizeLinear/QuantizeLinear with 16-bit types (and per-axis scales) need opset 21
EXTRA_FIX = "install the export extra: pip install -e '.[export]' (onnx, onnxscript, onnxruntime)"
SINGLE_FILE_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB ceiling, less headroom: larger models keep weights apart


def require_export_packages() -> None:
    """Fail early, naming the install command, when the export extra is missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {EXTRA_FIX}")


INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what the exported files may take


class _Logits(nn.Module):
    """``inputs → logits``: the one output the exported file has (a causal LM without its cache)."""

    def __init__(self, model: nn.Module, causal: bool) -> None:
        super().__init__()
        self.model, self.extra = model, {"use_cache": False} if causal else {}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in given.items() if v is not None}
        return self.model(input_ids=input_ids, **inputs, **self.extra).logits


def export_onnx(model: nn.Module, example: dict[str, Tensor], path: Path, max_length: int,
                causal: bool = True) -> dict[str, Any]:
    """Write ``model`` (eval mode, CPU) called on ``example``'s inputs (by name) to ``path`` and check
    it with ``onnx.checker``; returns what was written: file, opset, size, seconds, operator counts."""
    require_export_packages()
    import onnx

    unknown = sorted(set(example) - set(INPUTS))
    if unknown:
        raise ExportError(f"model inputs {unknown} have no place in the exported signature {list(INPUTS)}")

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    batch, sequence = torch.export.Dim("batch", max=1024), torch.export.Dim("sequence", max=max_length)
    try:
        program = torch.onnx.export(
            _Logits(model, causal).eval(), (), kwargs=example, dynamo=True, opset_version=OPSET, verbose=False,
            custom_translation_table=TRANSLATIONS, input_names=list(example), output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in example})
    except Exception as e:  # the exporter's own errors are long reports: keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx could not export {type(model).__name__}: {first}") from e
    size = sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())
    external = size > SINGLE_FILE_LIMIT
    program.save(str(path), external_data=external)
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    return {"file": path.name, "opset": OPSET, "inputs": list(example), "bytes": path.stat().st_size, "external_data": external,
            "seconds": round(time.perf_counter() - start, 3),
            "QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0),
            "nodes": sum(ops.values()), "checker": "passed"}
