"""A completed run's quantized model, rebuilt from what it saved: the fake-quantized model it scored.

A quantizing run saves its model as a plain HF checkpoint with every quantizer's encodings
(``quadapter.methods.saving``: ``<run dir>/folded`` for quadapter, ``<run dir>/quantized`` for the
others with ``method.save_quantized=true``). Loading that checkpoint and putting QuantSim back at the
same sites with those encodings gives the network the run evaluated, with fixed ranges: learned
ranges, folded Quadapter or SmoothQuant scales and GPTQ/AdaRound weights are all in the two files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from quadapter.export.qdq import ExportError
from quadapter.methods.saving import ENCODINGS_FILE, FOLDED_DIR, QUANTIZED_DIR
from quadapter.models.loading import load_model
from quadapter.models.sites import quant_sites
from quadapter.quant.levels import LEVELS
from quadapter.quant.sim import QuantizerConfig, QuantSim
from quadapter.tasks import task_class

EXPORTED_TASKS = ("lm", "glue")
SAVE_KNOB = {"quadapter": "method.save_folded=true"}  # every other quantizing method: method.save_quantized=true


@dataclass
class QuantizedRun:
    run_dir: Path
    cfg: DictConfig  # the run's resolved config (config.yaml)
    results: dict[str, Any]  # its results.json
    saved_dir: Path  # the checkpoint and encodings it saved
    encodings: dict[str, dict[str, Any]]
    model: nn.Module  # fake-quantized in place (sim.model), eval mode, CPU
    tokenizer: Any
    sim: QuantSim


def _read_json(path: Path, what: str, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: {fix}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable {what} ({e}): {fix}") from None


def saved_dir(run_dir: Path, results: dict[str, Any]) -> Path:
    """Where the run saved its quantized model; refuses runs that quantized nothing or saved nothing."""
    method = results.get("method")
    if method == "fp" or results.get("bits") == "fp":
        raise ExportError(f"{run_dir} is a method={method} run at full precision: it quantized nothing, "
                          "so there is no quantized model to export (export a ptq, qat, gptq, blockptq or "
                          "quadapter run)")
    for name in (FOLDED_DIR, QUANTIZED_DIR):
        if (run_dir / name / ENCODINGS_FILE).is_file():
            return run_dir / name
    knob = SAVE_KNOB.get(method, "method.save_quantized=true")
    raise ExportError(f"{run_dir} saved no quantized model (no {FOLDED_DIR}/ or {QUANTIZED_DIR}/ with "
                      f"{ENCODINGS_FILE}): re-run its command with {knob}")


def read_run(run_dir: str | Path) -> tuple[Path, DictConfig, dict[str, Any]]:
    """A completed run's dir, resolved config and results, checked to be exportable."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory: pass a run dir (it holds results.json and config.yaml)")
    fix = "pass the dir of a quadapter run (outputs/... or a sweep's subdir)"
    results = _read_json(run_dir / "results.json", "results", fix)
    status = results.get("status")
    if status != "completed":
        raise ExportError(f"{run_dir} is a {status} run, not a completed one: re-run its command (same dir) "
                          "to finish it, then export")
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
    except FileNotFoundError:
        raise ExportError(f"{run_dir / 'config.yaml'} is missing: {fix}") from None
    task = results.get("task", "lm")
    if task not in EXPORTED_TASKS:
        raise ExportError(f"{run_dir} is a task={task} run: the ONNX export covers "
                          f"task={', '.join(EXPORTED_TASKS)}")
    return run_dir, cfg, results


def _config(encodings: dict[str, dict[str, Any]], suffixes: tuple[str, ...]) -> QuantizerConfig | None:
    """The one quantizer config of a side (weights or activations) that ``encodings`` describe."""
    grids = {(e["bits"], e["symmetric"], e["granularity"], e.get("group_size"))
             for name, e in encodings.items() if name.endswith(suffixes)}
    if not grids:
        return None
    if len(grids) > 1:
        raise ExportError(f"{ENCODINGS_FILE} mixes grids on one side ({sorted(map(str, grids))}): it was not "
                          "written by one QuantSim")
    bits, symmetric, granularity, group_size = grids.pop()
    if bits in LEVELS:
        raise ExportError(f"bits.weight={bits}: ternary and binary weights have no QDQ export yet; export "
                          "covers integer grids (2..16 bits)")
    return QuantizerConfig(bits, symmetric, granularity, group_size=group_size)


def load_quantized_run(run_dir: str | Path) -> QuantizedRun:
    """The run's fake-quantized model, as it scored it, with fixed ranges from its encodings."""
    run_dir, cfg, results = read_run(run_dir)
    saved = saved_dir(run_dir, results)
    encodings = _read_json(saved / ENCODINGS_FILE, "encodings",
                           f"re-run the run's command in a fresh dir to save {saved.name}/ again")
    task = task_class(cfg)
    model, tokenizer = load_model(str(saved), None, "float32", bool(cfg.model.get("trust_remote_code")),
                                  arch=cfg.model.get("arch"), head=task.head, num_labels=task.num_labels(cfg))
    sites = (results.get("quantization") or {}).get("sites")
    if sites is None:
        raise ExportError(f"{run_dir / 'results.json'} records no quantization sites: it is not a quantizing run")
    layers, outputs = quant_sites(model, list(sites))
    sim = QuantSim(model, layers, outputs, weight=_config(encodings, (".weight",)),
                   act=_config(encodings, (".input", ".output")))
    quantizers = sim.quantizers()
    if set(quantizers) != set(encodings):
        extra, missing = sorted(set(encodings) - set(quantizers)), sorted(set(quantizers) - set(encodings))
        raise ExportError(f"{saved / ENCODINGS_FILE} does not match the run's sites {list(sites)}: "
                          f"{len(missing)} sites without encodings {missing[:3]}, {len(extra)} encodings without "
                          f"a site {extra[:3]}; re-run the run's command in a fresh dir")
    for name, q in quantizers.items():
        if encodings[name]["granularity"] == "per_token":  # dynamic: no range to load (refused at export)
            continue
        try:
            q.load_encodings(encodings[name])
        except ValueError as e:
            raise ExportError(f"{saved / ENCODINGS_FILE}: {name}: {e}") from None
    return QuantizedRun(run_dir, cfg, results, saved, encodings, model.eval(), tokenizer, sim)
