"""The default comparison's ``compare`` axis versus a ``method=`` on the command line.

``quadapter -m`` sweeps ``compare=fp,ptq,smoothquant,qat,quadapter`` (``hydra.sweeper.params``), each
option choosing a method (and SmoothQuant's adapter). Someone who types ``quadapter -m method=qat
bits=w4a4,w8a8`` wants QAT at two bit-widths; left alone, Hydra would run the five comparison entries
at each bit-width, every one forced to QAT by the command line (which outranks a config's defaults
list), SmoothQuant's entry still named ``ptq+smoothquant``. So a ``method=`` without ``compare=``
drops the axis, and ``compare=`` with ``method=`` is refused as a contradiction.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from quadapter.errors import ConfigError

log = logging.getLogger(__name__)


def chosen(overrides: Sequence[str]) -> dict[str, Any]:
    """Group or key -> value of the command line's overrides (``None`` for ``=null``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return {o.key_or_group: (o.value() if not o.is_delete() else None) for o in parsed}


def check(overrides: Sequence[str]) -> None:
    """Refuse a run whose command line picks both a comparison entry and a method."""
    given = chosen(overrides)
    if "method" in given and given.get("compare") is not None:
        raise ConfigError(
            f"compare={given['compare']} and method={given['method']} both choose the method: "
            f"compare=<entry> runs one entry of the default comparison (its method and adapter), "
            f"method=<name> runs that method alone. Keep one of them.")


class ComparisonAxis(Callback):
    """Hydra callback: before a sweep starts, drop the ``compare`` axis when ``method=`` is given.

    (Hydra turns a callback's exceptions into warnings, so the contradiction itself is refused by
    each run: ``check``, called by ``quadapter.runner.run``.)
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        given = chosen(config.hydra.overrides.task)
        if "method" not in given or "compare" in given:
            return
        params = config.hydra.sweeper.get("params")
        if params is not None and "compare" in params:
            with read_write(params), open_dict(params):
                dropped = params.pop("compare")
            log.info("method=%s given: the sweep runs it instead of the comparison (compare=%s)",
                     given["method"], dropped)
