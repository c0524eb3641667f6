"""A resumable Lightning checkpoint, or a ``CheckpointError`` saying which file to delete.

Training resumes from ``<run dir>/checkpoints/<phase>/last.ckpt``; a finished phase that is not
Lightning training (Quadapter's block-wise calibration) is recorded by ``save_phase`` and skipped
on resume by ``load_phase``. A file that cannot be read
(truncated by a full disk or an interrupted copy, or not a checkpoint at all) would otherwise fail
deep inside ``Trainer.fit`` with a zip-archive error; checking it first names the file and the fix.
The check loads it the way Lightning resumes it (``torch.load`` with ``weights_only=True``, which
refuses pickled code), memory-mapped so the tensors themselves are not read.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from quadapter.errors import UserError

# What Lightning's resume reads from every checkpoint it writes.
REQUIRED_KEYS = ("state_dict", "global_step", "loops", "optimizer_states")


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from; the message names the file and how to start over."""


def check_checkpoint(path: str | Path) -> None:
    """Raise ``CheckpointError`` unless ``path`` is a readable Lightning checkpoint to resume from."""
    path = Path(path)
    fix = (f"delete it (rm {path}) and re-run the same command: this training phase restarts "
           "from step 0")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} to resume from; start the phase without one")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if any("GLOBAL" in line for line in str(e).splitlines()):
            reason = "it holds pickled Python objects that a weights-only load refuses"
        else:
            reason = "it is corrupt: torch.load cannot read it"
        raise CheckpointError(f"checkpoint {path} cannot be resumed from: {reason}; {fix}") from e
    except Exception as e:  # zip, EOF and OS errors: a truncated or foreign file
        detail = str(e).split(". ")[0]  # torch's zip errors go on for a paragraph
        raise CheckpointError(f"checkpoint {path} cannot be resumed from: it is truncated or corrupt "
                              f"({type(e).__name__}: {detail}); {fix}") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} cannot be resumed from: it is not a Lightning "
                              f"training checkpoint (no {', '.join(missing)}); {fix}")


def save_phase(path: str | Path, params: Mapping[str, Tensor], summary: dict[str, Any],
               rng: dict[str, Any]) -> None:
    """Record a finished non-Lightning phase (Quadapter's block-wise one): what it trained, its
    summary and the RNG state after it, so a resumed run skips it and goes on bit-identically.
    Written to a temporary file and renamed: a kill mid-write leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"params": {k: v.detach().cpu() for k, v in params.items()}, "summary": summary,
                "rng": rng}, tmp)
    tmp.replace(path)


def load_phase(path: str | Path, params: Mapping[str, Tensor]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Copy a finished phase's values into ``params``; returns its (summary, rng state), or None
    when there is no such file. The file must hold exactly these parameters with these shapes."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = f"delete it (rm {path}) and re-run the same command: that phase runs again"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, summary, rng = state["params"], state["summary"], state["rng"]
    except Exception as e:
        raise CheckpointError(f"phase checkpoint {path} cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); {fix}") from e
    differ = sorted(set(saved) ^ set(params)) + sorted(
        k for k in set(saved) & set(params) if tuple(saved[k].shape) != tuple(params[k].shape))
    if differ:
        raise CheckpointError(f"phase checkpoint {path} does not fit this run: it holds other "
                              f"parameters ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); "
                              f"{fix}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])
    return summary, rng
