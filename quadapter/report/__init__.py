"""Compare runs: pivot tables of their ``results.json``, published numbers beside them, curves.

``quadapter-report PATH...`` (``main``) tabulates any run and sweep dirs; ``SweepReport`` is the
Hydra callback that writes ``comparison.md`` and ``curves.png`` into every sweep dir. Modules:
``load`` (find and read runs), ``protocol`` (the guard that keeps differently measured numbers
apart), ``reference`` (published numbers), ``pivot`` (tables), ``formats`` (markdown, CSV,
LaTeX), ``plot`` (overfitting curves), ``cli``, ``callback``.
"""

from quadapter.report.callback import SweepReport, write_sweep_report
from quadapter.report.cli import main
from quadapter.report.formats import render
from quadapter.report.load import load_runs, method_label
from quadapter.report.pivot import build_report, make_layout
from quadapter.report.plot import plot_curves
from quadapter.report.reference import load_reference

__all__ = ["SweepReport", "build_report", "load_reference", "load_runs", "main", "make_layout",
           "method_label", "plot_curves", "render", "write_sweep_report"]
