"""onnxruntime behind the interface quadapter's evaluators call: ``model(**inputs).logits``.

So the check scores the exported file with the very evaluator a run used (the perplexity of
``quadapter.evaluation``, GLUE's dev metrics), not a second implementation of it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from quadapter.export.onnx_file import require_export_packages


def session(path: Path, threads: int | None = None):
    """A CPU inference session with every graph optimization on (what a deployment runs)."""
    require_export_packages()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class RuntimeModel(nn.Module):
    """An exported ONNX file run by onnxruntime, called like the transformers model it came from
    (a causal LM's ``model(input_ids, logits_to_keep=...)``, a classifier's ``model(**inputs)``)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.session = session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids: Tensor, logits_to_keep: Tensor | None = None, **inputs: Tensor) -> SimpleNamespace:
        inputs["input_ids"] = input_ids
        feed = {name: inputs[name].cpu().numpy() for name in self.inputs}
        logits = torch.from_numpy(self.session.run(["logits"], feed)[0])
        if logits_to_keep is not None:
            logits = logits[:, logits_to_keep.cpu()]
        return SimpleNamespace(logits=logits)
