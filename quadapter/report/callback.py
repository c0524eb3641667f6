"""The Hydra callback that reports every ``quadapter -m`` sweep when it ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from quadapter.report.formats import markdown
from quadapter.report.load import load_runs
from quadapter.report.pivot import build_report
from quadapter.report.plot import plot_curves

log = logging.getLogger(__name__)


def write_sweep_report(sweep_dir: Path) -> str | None:
    """``comparison.md`` (the default pivot) and ``curves.png`` in ``sweep_dir``; the text to print."""
    loaded = load_runs([sweep_dir])
    if not loaded.runs:
        return None
    table = markdown(build_report(loaded))
    (sweep_dir / "comparison.md").write_text(table + "\n")
    plotted = plot_curves(loaded.runs, sweep_dir / "curves.png") is not None
    return (f"\n{table}\n\ntable: {sweep_dir / 'comparison.md'}"
            + (f"\ncurves: {sweep_dir / 'curves.png'}" if plotted else ""))


class SweepReport(Callback):
    """Hydra ``on_multirun_end``: the sweep's comparison table and curves, written and printed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            text = write_sweep_report(sweep_dir)
        except Exception:  # the runs are done and recorded; a report bug must not hide that
            log.exception("could not write the report of sweep %s (try: quadapter-report %s)",
                          sweep_dir, sweep_dir)
            return
        if text:
            print(text)
