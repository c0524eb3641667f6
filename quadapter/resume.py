"""What to do with a run dir that already holds a ``results.json``: the resume rule of sweeps.

Hydra cannot resume a multirun, but the same sweep command with the same ``hydra.sweep.dir`` gives
every job the same dir again, so each run decides for itself from what its dir holds:

- no results yet: run;
- completed with the same config hash: skip (``resume.skip_completed``);
- interrupted (``running`` left by a killed process, or ``interrupted`` by SIGINT/SIGTERM): run again,
  training resumes from its last Lightning checkpoint;
- failed: skipped unless ``resume.rerun_failed=true``;
- a different config hash: refuse, so results and checkpoints of another config are never mixed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from quadapter.errors import UserError
from quadapter.tracking import config_differences

log = logging.getLogger(__name__)
Action = Literal["run", "skip", "resume"]
incomplete_runs: list[str] = []  # of the last sweep, for the exit status of `quadapter -m`


LOCK_FILE, OWNER_FILE = ".quadapter.lock", ".quadapter.owner"


class RunDirBusy(UserError):
    """Another live process owns the run dir (a repeated command, a sweep launched twice)."""


@contextmanager
def owned(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process while a run reads and writes it.

    An OS file lock (``filelock``): the kernel releases it when its process dies, so a killed run's
    dir is taken over by the next attempt, while a second process beside a live owner is refused
    before it reads or writes anything. ``.quadapter.owner`` names the owner for the message.
    """
    run_dir = Path(run_dir)
    lock = FileLock(run_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            owner = json.loads((run_dir / OWNER_FILE).read_text())
            who = f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        raise RunDirBusy(f"{run_dir} is in use by {who}; its run was not touched. Wait for it to end, "
                         "or give this run its own dir (a new hydra.sweep.dir or hydra.run.dir)") from None
    except OSError as e:  # a read-only dir, a file system without locks
        raise UserError(f"cannot lock the run dir {run_dir} ({type(e).__name__}: {e}); give the run "
                        "a writable dir on a local file system (hydra.run.dir or hydra.sweep.dir)") from e
    try:
        (run_dir / OWNER_FILE).write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        yield
    finally:
        lock.release()


def previous_results(path: Path) -> dict[str, Any] | None:
    """The results.json of an earlier attempt, None if there is none (unreadable counts as interrupted)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s): treating the run as interrupted", path, e)
        return {"status": "running", "config_hash": None, "error": f"unreadable results.json: {e}"}


def decide(previous: dict[str, Any] | None, config_hash: str, run_dir: Path,
           skip_completed: bool = True, rerun_failed: bool = False,
           config: Mapping[str, Any] | None = None) -> Action:
    """The resume rule above; raises ``UserError`` when the dir belongs to a different config,
    naming the keys that differ when ``config`` (this run's, resolved) and the dir's ``config.yaml``
    are at hand."""
    if previous is None:
        return "run"
    theirs = previous.get("config_hash")
    if theirs is not None and theirs != config_hash:
        raise UserError(
            f"{run_dir} already holds a run of a different config (config hash {theirs}, this one "
            f"{config_hash}{_differences(run_dir, config)}); nothing was changed. Give this run its own "
            f"dir (a new hydra.sweep.dir or hydra.run.dir), or delete {run_dir} to start over")
    status = previous.get("status")
    if status == "completed":
        return "skip" if skip_completed else "run"
    if status == "failed":
        return "resume" if rerun_failed else "skip"
    return "resume"


def _differences(run_dir: Path, config: Mapping[str, Any] | None, most: int = 5) -> str:
    saved = run_dir / "config.yaml"
    if config is None or not saved.is_file():
        return ""
    try:
        theirs = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return ""
    diffs = config_differences(theirs if isinstance(theirs, dict) else {}, config)
    if not diffs:
        return ""
    more = f"; {len(diffs) - most} more" if len(diffs) > most else ""
    return f"; theirs -> this: {'; '.join(diffs[:most])}{more}"


class SweepExitStatus(Callback):
    """Hydra callback: after a sweep, list the runs that did not complete (``quadapter -m`` exits 1)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for path in sorted(Path(config.hydra.sweep.dir).glob("*/results.json")):
            status = (previous_results(path) or {}).get("status")
            if status != "completed":
                incomplete_runs.append(f"{path.parent.name} ({status})")
