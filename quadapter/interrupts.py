"""SIGINT/SIGTERM turn into ``RunInterrupted``, so a stopped run still writes its results and closes W&B.

Outside training the exception is raised at once. Inside training (``deferred()``) an optimizer step
must not be cut in half, so the signal is only recorded; the training callback checks ``requested()``
after each batch, saves a checkpoint and raises there. A second signal while one is pending raises
at once (the user insists).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from quadapter.errors import RunInterrupted

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"deferred": False, "requested": None}


def requested() -> str | None:
    """The name of a signal received while deferred (None if none)."""
    return _state["requested"]


def _handler(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    if _state["deferred"] and _state["requested"] is None:
        _state["requested"] = name
        return
    raise RunInterrupted(f"received {name}", name)


@contextmanager
def interruptible() -> Iterator[None]:
    """Install the handlers for one run (main thread only; elsewhere signals keep their defaults)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    _state["requested"] = None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(deferred=False, requested=None)


@contextmanager
def deferred() -> Iterator[None]:
    """While training: record the first signal instead of raising (see the module docstring)."""
    before = _state["deferred"]
    _state["deferred"] = True
    try:
        yield
    finally:
        _state["deferred"] = before
