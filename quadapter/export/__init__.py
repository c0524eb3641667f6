"""ONNX export of a completed run's quantized model, verified with onnxruntime (``quadapter-export``).

``export_run(run_dir)`` rebuilds the fake-quantized model the run scored (``saved_run``), swaps its
quantizers for QuantizeLinear/DequantizeLinear pairs and integer weight codes (``qdq``), writes
``<run dir>/export/model.onnx`` with ``torch.onnx`` and ``onnx``'s checker (``onnx_file``), copies the
encodings beside it, and runs the file with onnxruntime against the PyTorch model on a fixed
held-out slice (``check``): ``export/check.json``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from quadapter.export.qdq import ExportError, to_qdq
from quadapter.methods.saving import ENCODINGS_FILE

__all__ = ["ExportError", "export_run"]
log = logging.getLogger(__name__)
EXPORT_DIR = "export"
CHECK_TOKENS = 4096  # causal LMs: the held-out slice the check scores (its first N tokens)
CHECK_EXAMPLES = 256  # GLUE: the first N dev examples


def check_data(run, eval_set: str | None, tokens: int, examples: int):
    """The fixed held-out slice the check scores, through the run's own task: a causal LM's first
    ``tokens`` tokens of one held-out set (default: the first, the fine-tuning dataset's test split)
    with the run's context and stride; a GLUE run's first ``examples`` dev examples."""
    from quadapter.export.check import glue_check_data, lm_check_data
    from quadapter.runner import default_cache_dir
    from quadapter.tasks import task_class

    cfg = run.cfg
    data_dir = os.environ.get("QUADAPTER_DATA_DIR") or cfg.paths.get("data_dir")
    cache_dir = Path(os.environ.get("QUADAPTER_CACHE_DIR") or cfg.paths.get("cache_dir") or default_cache_dir())
    task = task_class(cfg)(cfg, run.model, run.tokenizer, data_dir, cache_dir)
    if task.name == "glue":
        if eval_set not in (None, cfg.dataset.name):
            raise ExportError(f"--set {eval_set}: a GLUE run scores its dev split only ({cfg.dataset.name})")
        return glue_check_data(task, examples, {"set": cfg.dataset.name, "split": "dev"})
    name = eval_set or next(iter(task.test_ids))
    if name not in task.test_ids:
        raise ExportError(f"--set {name}: the run scored {', '.join(task.test_ids)}; pick one of them")
    ids = task.test_ids[name][:tokens]
    return lm_check_data(ids, task.context, task.stride, cfg.eval.batch_size,
                         {"set": name, "split": cfg.eval.split, "tokens": len(ids), "context": task.context,
                          "stride": task.stride, "batch_size": cfg.eval.batch_size})


def export_run(run_dir: str | Path, tokens: int = CHECK_TOKENS, eval_set: str | None = None,
               check: bool = True, examples: int = CHECK_EXAMPLES) -> dict[str, Any]:
    """Export ``run_dir``'s quantized model to ``<run dir>/export`` and check it; returns check.json's content."""
    from quadapter.export.check import check_export
    from quadapter.export.onnx_file import export_onnx, require_export_packages
    from quadapter.export.saved_run import load_quantized_run
    from quadapter.models.arch import for_model
    from quadapter.tracking import environment, write_json_atomic

    require_export_packages()
    if tokens < 2 or examples < 1:
        raise ExportError(f"--tokens {tokens} / --examples {examples} score nothing: pass at least 2 tokens and "
                          f"1 example (defaults {CHECK_TOKENS}, {CHECK_EXAMPLES})")
    run = load_quantized_run(run_dir)
    out = run.run_dir / EXPORT_DIR
    out.mkdir(exist_ok=True)
    data = check_data(run, eval_set, tokens, examples) if check else None
    runtime_model = copy.deepcopy(run.model)
    sites = to_qdq(runtime_model)
    causal = run.results.get("task", "lm") == "lm"
    # traced at batch 2: torch.export specializes a dimension of size 1 (it would stay 1 in the file)
    example = ({"input_ids": torch.randint(0, run.model.config.vocab_size, (2, 16))} if causal else
               dict(run.tokenizer(["an example sentence", "another one"], padding=True, return_tensors="pt")))
    log.info("exporting %s (%d layers: %d weights, %d activation sites)", run.run_dir, sites["layers"],
             sites["weights"], sites["activations"])
    written = export_onnx(runtime_model, example, out / "model.onnx",
                          for_model(run.model).context_length(run.model.config), causal)
    del runtime_model
    shutil.copyfile(run.saved_dir / ENCODINGS_FILE, out / ENCODINGS_FILE)
    report: dict[str, Any] = {
        "run_dir": str(run.run_dir), "run_name": run.results.get("run_name"), "method": run.results.get("method"),
        "model": run.results.get("model"), "bits": run.results.get("bits"), "saved": str(run.saved_dir),
        "sites": sites, "onnx": written,
        "environment": environment()}
    if data is not None:
        log.info("checking with onnxruntime on %s", ", ".join(f"{k} {v}" for k, v in data.info.items()))
        report["check"] = check_export(run.model, out / "model.onnx", data)
        report["passed"] = report["check"]["passed"]
    write_json_atomic(out / "check.json", report)
    return report
