"""Find and read the runs a report is made of: every ``results.json`` under the given paths.

A run that cannot be read is kept (as ``unreadable``, with the reason) so the report can list it
instead of failing; a Hydra job dir without any ``results.json`` is remembered too.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

# Fields of results.json that say what a run is; `run` (its dir) and `set` (a held-out set) join them.
IDENTITY = ("method", "bits", "model", "dataset", "adapter", "quantizer", "eval", "seed", "run_name")
FIELDS = (*IDENTITY, "run", "set")
INCOMPLETE = ("running", "interrupted")  # left by a killed run, or one stopped by SIGINT/SIGTERM
# Config keys that say where or how a run logs, not what it computes (as tracking.config_hash).
_NOT_COMPUTED = ("paths", "logger", "run_name", "resume", "hydra")


def method_label(ident: dict[str, Any]) -> str:
    """``ptq+smoothquant``: the method, and its adapter where the method does not imply it;
    ``quadapter@smoothquant``: an adapter started from another initialization than α = 1."""
    method, adapter = ident.get("method"), ident.get("adapter") or "none"
    label = str(method) if adapter in ("none", method) else f"{method}+{adapter}"
    init = ident.get("adapter_init")
    return label if init in (None, "ones") else f"{label}@{init}"


def _natural(path: Path) -> list:
    """Sort key putting sweep job ``10_x`` after ``9_x``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


@dataclass
class Run:
    """One run dir and its ``results.json`` (``result`` is empty when ``problem`` says why)."""

    dir: Path
    result: dict[str, Any]
    problem: str | None = None
    name: str = ""  # short display name: the dir relative to the runs' common ancestor

    @property
    def status(self) -> str:
        return "unreadable" if self.problem else str(self.result.get("status"))

    @property
    def error(self) -> str | None:
        return self.problem or self.result.get("error")

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """The run's resolved ``config.yaml``; None when absent or unreadable."""
        try:
            cfg = yaml.safe_load((self.dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return None
        return cfg if isinstance(cfg, dict) else None

    def field(self, key: str) -> str:
        """The value of an identity field, ``run``, or a dotted key of the run's config.yaml."""
        if key == "method":
            return method_label(self.result)
        if key == "run":
            return self.name
        if key in IDENTITY:
            return str(self.result.get(key))
        return config_value(self.config, key)

    def sets(self, metric: str) -> list[str]:
        """Held-out sets with a ``test/<set>/<metric>`` value; for unfinished runs, the sets it meant to score."""
        names = [k.split("/")[1] for k in self.result.get("metrics") or {}
                 if k.count("/") == 2 and k.startswith("test/") and k.endswith(f"/{metric}")]
        if self.status != "completed":
            names += list(self.result.get("protocol") or {}) + planned_sets(self.config)
        return list(dict.fromkeys(names))

    def curves(self) -> list[dict[str, float]]:
        """Training curves (``step``, ``train/<metric>``, ``val/<set>/<metric>``): results.json, else
        ``csv/metrics.csv``."""
        curves = (self.result.get("training") or {}).get("curves")
        return curves if curves else read_metrics_csv(self.dir / "csv" / "metrics.csv")


def config_value(config: dict[str, Any] | None, dotted: str) -> str:
    """``method.lr.weights`` of a config as text; ``n/a`` where the run's config has no such key."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "n/a"
        node = node[part]
    return str(node)


def planned_sets(config: dict[str, Any] | None) -> list[str]:
    """The sets a run scores (its dataset, then ``eval.sets``), read from its config.yaml."""
    if not config:
        return []
    names = [(config.get("dataset") or {}).get("name")]
    names += [(s or {}).get("name") for s in ((config.get("eval") or {}).get("sets") or {}).values()]
    return [n for n in names if n]


def flat_config(config: dict[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """``{"method.lr.weights": "1e-4", ...}`` of what a run computes (paths and loggers left out)."""
    out: dict[str, str] = {}
    for k, v in (config or {}).items():
        if not prefix and k in _NOT_COMPUTED:
            continue
        if isinstance(v, dict):
            out |= flat_config(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v, default=str)
    return out


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """The curve points of a Lightning CSV log, merged per step (later rows win, as on a resume)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    points: dict[int, dict[str, float]] = {}
    for row in rows:
        vals = {k: float(v) for k, v in row.items()
                if k and v not in (None, "") and k.startswith(("train/", "val/")) and k != "train/loss"}
        if vals and row.get("step") not in (None, ""):
            step = int(float(row["step"]))
            points.setdefault(step, {"step": step}).update(vals)
    return [points[s] for s in sorted(points)]


@dataclass
class Loaded:
    """What was found under the paths: runs (readable or not) and job dirs without results."""

    runs: list[Run] = field(default_factory=list)
    without_results: list[Path] = field(default_factory=list)


def read_run(path: Path) -> Run:
    """One ``results.json``; anything but a quadapter results object becomes an unreadable run."""
    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return Run(path.parent, {}, f"{type(e).__name__}: {e}")
    if not isinstance(res, dict) or "status" not in res or "method" not in res:
        return Run(path.parent, {}, "not a quadapter results.json (no 'status' and 'method')")
    return Run(path.parent, res)


def load_runs(paths: list[Path]) -> Loaded:
    """Every ``results.json`` under ``paths`` (dirs searched recursively, files taken as given)."""
    loaded, seen = Loaded(), set()
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("results.json"), key=_natural)
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                loaded.runs.append(read_run(f))
        if root.is_dir():  # Hydra made the job dir, but the run never wrote its results
            loaded.without_results += [d.parent for d in sorted(root.rglob(".hydra"), key=_natural)
                                       if not (d.parent / "results.json").exists()]
    dirs = [str(r.dir.resolve()) for r in loaded.runs]
    base = os.path.commonpath(dirs) if len(dirs) > 1 else None
    for r in loaded.runs:
        rel = os.path.relpath(r.dir.resolve(), base) if base else "."
        r.name = r.dir.resolve().name if rel == "." else rel
    return loaded
