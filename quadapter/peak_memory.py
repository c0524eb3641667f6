"""Peak memory of a stretch of code, for costs recorded beside results (not for limits).

On a GPU it is the CUDA caching allocator's peak of allocated tensors. On the CPU the process's
resident set is sampled by a thread (every ``interval`` seconds): it includes everything the
process holds (the model, the data, the allocator's free pool), so compare it between the units
and methods of one kind of run, not as what a stretch allocated by itself.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """The process's resident set now (Linux), else its peak so far (``ru_maxrss``)."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except OSError:
        import resource  # POSIX only, and only where /proc is absent

        scale = 1 if os.uname().sysname == "Darwin" else 1024  # macOS reports bytes, Linux KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.megabytes`` (and ``peak.kind``)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device, self.interval = torch.device(device), interval
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_resident"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, resident_bytes())

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda_allocated":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = resident_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda_allocated":
            self._peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, resident_bytes())

    @property
    def megabytes(self) -> float:
        return round(self._peak / 2**20, 1)
