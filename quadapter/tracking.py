"""Run identity, loggers and the results file: everything a run leaves behind for comparison.

Every run writes a local CSV log and ``results.json`` (atomically) so nothing depends on a server;
W&B is added on top, offline unless credentials are configured (``wandb sync`` uploads later).
"""

from __future__ import annotations

import csv
import logging
import hashlib
import json
import netrc
import os
import platform
import subprocess
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from quadapter.errors import UserError

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "online", "offline", "disabled")
# Keys that say where or how a run is logged, not what it computes: left out of the config hash.
_NOT_HASHED = ("paths", "logger", "run_name", "resume")
_CHECKOUT = Path(__file__).resolve().parents[1]  # the editable install's source tree
# Libraries whose versions change numbers; recorded in every results.json.
_VERSIONED = ("torch", "pytorch-lightning", "transformers", "tokenizers", "datasets", "torchmetrics",
              "hydra-core", "omegaconf", "wandb", "numpy", "quadapter")


def hashed_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a config that decides what a run computes (not paths, loggers, names, resume)."""
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in resolved.items() if k not in _NOT_HASHED}


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """Identity of what a run computes: equal hashes mean interchangeable results."""
    return hashlib.sha256(json.dumps(hashed_config(cfg), sort_keys=True).encode()).hexdigest()[:16]


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (``absent`` where one lacks it)."""
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, Mapping) or not node:
            return {prefix: node}
        return {k: v for key, value in node.items()
                for k, v in flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}

    absent = object()
    a, b = flat(hashed_config(old), ""), flat(hashed_config(new), "")

    def show(value: Any) -> str:
        return "absent" if value is absent else json.dumps(value, default=str)  # YAML-like: null, true

    return [f"{k}: {show(a.get(k, absent))} -> {show(b.get(k, absent))}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, absent) != b.get(k, absent)]


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write-then-rename, so a crash never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def git_commit(repo: Path = _CHECKOUT) -> str | None:
    """The checkout's commit, suffixed ``-dirty`` with uncommitted changes; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def environment() -> dict[str, Any]:
    """What produced a result: Python, library versions and the code's commit."""
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "git_commit": git_commit()}


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` is online only when the user has configured W&B, so a run never prompts for a key."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb.mode={mode!r} is not one of {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_credentials() else "offline"


def wandb_credentials() -> bool:
    """Whether W&B has an API key: ``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes for
    its server (``WANDB_BASE_URL``'s host; the netrc file ``NETRC`` names, else ``~/.netrc``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return bool(netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or ""))
    except (OSError, netrc.NetrcParseError):
        return False


def csv_logger(run_dir: Path) -> CSVLogger:
    """``<run dir>/csv/metrics.csv``, flushed at every log call (a killed run keeps every curve point;
    they are sparse), keeping an earlier attempt's rows: Lightning's CSV writer deletes an existing
    metrics.csv when it opens the dir, which would drop a resumed run's curve up to the interruption."""
    logger = CSVLogger(save_dir=str(run_dir), name="csv", version="", flush_logs_every_n_steps=1)
    earlier = Path(logger.log_dir) / "metrics.csv"
    if not earlier.is_file():
        return logger
    with earlier.open(newline="") as f:
        rows = list(csv.DictReader(f))
    with warnings.catch_warnings():  # "... will be deleted": not so, they are written back below
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        logger.experiment  # noqa: B018 (opens the writer, which removes the file)
    for row in rows:
        step = row.pop("step", None)
        metrics = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
        if metrics and step not in (None, ""):
            logger.log_metrics(metrics, step=int(float(step)))
    logger.save()
    return logger


def build_loggers(logger_cfg: Mapping[str, Any], run_dir: Path, run_name: str, group: str,
                  job_type: str, tags: list[str], config: dict) -> list[Logger]:
    loggers: list[Logger] = []
    if logger_cfg.get("csv", True):
        loggers.append(csv_logger(run_dir))
    wb = logger_cfg.get("wandb")
    if wb:
        mode = resolve_wandb_mode(wb.get("mode", "auto"))
        if mode == "online" and not wandb_credentials():  # W&B would fail only at the run's end
            raise UserError("W&B is online (logger.wandb.mode or WANDB_MODE) but has no API key: "
                            "run `wandb login` (or set WANDB_API_KEY), or log offline with "
                            "logger.wandb.mode=offline and upload later with `wandb sync`")
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            logger = WandbLogger(
                name=run_name, project=wb["project"], entity=wb.get("entity"),
                group=wb.get("group") or group, job_type=job_type,
                tags=sorted(set(tags) | set(wb.get("tags") or [])), save_dir=str(run_dir),
                offline=mode == "offline", config=config)
            try:  # start it now: a refused key or unreachable server fails before any work
                logger.experiment  # noqa: B018
            except Exception as e:
                raise UserError(f"W&B could not start the run ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}); "
                                "check `wandb login` and the network, or log offline with "
                                "logger.wandb.mode=offline and `wandb sync` later") from e
            loggers.append(logger)
    return loggers


def log_metrics(loggers: list[Logger], metrics: Mapping[str, float], step: int) -> None:
    for logger in loggers:
        logger.log_metrics(dict(metrics), step=step)


def log_table(loggers: list[Logger], key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A table for the loggers that show tables (W&B: a ``wandb.Table``); others skip it."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=rows)


PROTOCOL_SUMMARY = ("context", "stride", "scored_tokens", "examples", "max_length")  # LM windows; GLUE examples


def summary_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """The flat scalars of ``results.json`` that W&B shows as the run summary (table columns)."""
    out = {k: results.get(k) for k in ("status", "error", "method", "bits", "model", "dataset", "adapter",
                                        "quantizer", "config_hash")}
    out.update(results.get("metrics", {}))
    out.update({f"timings/{k}": v for k, v in results.get("timings", {}).items()})
    for name, proto in results.get("protocol", {}).items():  # each task's own protocol keys (LM, GLUE)
        out.update({f"protocol/{name}/{k}": proto[k] for k in PROTOCOL_SUMMARY if k in proto})
    out["git_commit"] = results.get("environment", {}).get("git_commit")
    return {k: v for k, v in out.items() if v is not None}


def close_loggers(loggers: list[Logger], results: Mapping[str, Any]) -> None:
    """Flush every logger and finish the W&B run (summary = results), so no run is left open.

    Never raises: ``results.json`` and the CSV already hold the run, so a logger that fails to close
    (a W&B server that went away) is a warning, not a failed run."""
    status = results["status"]
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(summary_of(results))
            logger.finalize("success" if status == "completed" else "failed")
        except Exception as e:
            log.warning("%s could not close (%s: %s); results.json holds the run",
                        type(logger).__name__, type(e).__name__, e)
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        try:
            wandb.finish(exit_code=0 if status == "completed" else 1)
        except Exception as e:
            log.warning("W&B could not finish the run (%s: %s); upload its folder under "
                        "<run dir>/wandb later with `wandb sync`", type(e).__name__, e)
