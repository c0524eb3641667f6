"""``quadapter-report PATH...``: compare the runs under run dirs, sweep dirs or results.json files.

Exit status: 0 when a table was printed, 1 when there was nothing to tabulate (no results.json, or
none readable), 2 for a bad invocation (a path or reference file that does not exist or parse, an
unknown field).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from matplotlib.figure import Figure

from quadapter.report.formats import FORMATS, one_line, render
from quadapter.report.load import FIELDS, load_runs
from quadapter.report.pivot import build_report, make_layout
from quadapter.report.plot import plot_curves
from quadapter.report.reference import ReferenceFileError, load_reference

_EPILOG = f"""fields: {', '.join(FIELDS)} (the held-out set), or a dotted key of the runs' config.yaml
(e.g. method.lr.weights). Defaults: --rows method --cols set --split-by bits; full-precision runs
are the reference row of every bit-width's table. A cell with several runs shows mean ± std (n=k).

examples:
  quadapter-report multirun/2024-06-01_12-00-00
  quadapter-report multirun/* --rows method,model --format latex
  quadapter-report multirun/sweep --rows run --split-by none         # one row per run
  quadapter-report multirun/sweep --plot curves.png --reference refs/gpt2.yaml
"""


def _fields(text: str) -> list[str]:
    return [] if text.strip() == "none" else [f.strip() for f in text.split(",") if f.strip()]


def _decimals(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of decimals (0, 1, 2, ...), got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quadapter-report", epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Compare the results.json of runs and sweeps: a pivot table "
                                            "per bit-width, published numbers beside ours, curves.")
    p.add_argument("paths", nargs="+", type=Path, help="run dirs, sweep dirs or results.json files")
    p.add_argument("--rows", type=_fields, metavar="FIELDS", help="field(s) of the rows, comma-separated (default: method)")
    p.add_argument("--cols", type=_fields, metavar="FIELDS", help="field(s) of the columns (default: set)")
    p.add_argument("--split-by", type=_fields, metavar="FIELDS",
                   help="field(s) with one table per value, or 'none' (default: bits)")
    p.add_argument("--metric", default="auto", help="the test/<set>/<metric> value shown (default: auto, each "
                   "task's own: ppl for LM runs, every GLUE metric for GLUE runs, in tables of their own)")
    p.add_argument("--format", choices=FORMATS, default="markdown")
    p.add_argument("--precision", type=_decimals, default=2, help="decimals (default: 2)")
    p.add_argument("--plot", type=Path, metavar="FILE",
                   help="write the overfitting curves (train vs held-out ppl over steps) to FILE")
    p.add_argument("--reference", type=Path, action="append", default=[], metavar="FILE.yaml",
                   help="published numbers to show beside ours (repeatable; format: README)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        layout = make_layout(args.rows, args.cols, args.split_by)
    except ValueError as e:
        p.error(str(e))
    missing = [str(x) for x in [*args.paths, *args.reference] if not x.exists()]
    if missing:
        print(f"quadapter-report: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.plot and args.plot.suffix.lstrip(".") not in Figure().canvas.get_supported_filetypes():
        print(f"quadapter-report: --plot {args.plot}: unknown image type; use .png, .pdf or .svg",
              file=sys.stderr)
        return 2
    try:
        references = [load_reference(f) for f in args.reference]
    except ReferenceFileError as e:
        print(f"quadapter-report: {e}", file=sys.stderr)
        return 2
    loaded = load_runs(args.paths)
    if not loaded.runs:
        print(f"quadapter-report: no results.json under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    report = build_report(loaded, references, layout, args.metric)
    text = render(report, args.format, args.precision)
    try:
        sys.stdout.write(text if args.format == "csv" else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `quadapter-report ... | head`: the reader has enough; the plot is still due
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if args.format == "csv" and (report.notes or any(t.notes for t in report.tables)):
        notes = [n for t in report.tables for n in t.notes] + report.notes
        print("\n".join(map(one_line, notes)), file=sys.stderr)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig = plot_curves(loaded.runs, args.plot)
        print(f"curves: {args.plot}" if fig else "no training curves to plot (only qat and quadapter "
              "runs train)", file=sys.stderr)
    if not report.tables:
        readable = [r for r in loaded.runs if not r.problem]
        why = (f"no run has a test/<set>/{args.metric} value" if readable
               else "none of the results.json could be read")
        print(f"quadapter-report: no table: {why}", file=sys.stderr)
        return 1
    return 0
