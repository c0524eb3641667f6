"""Aggregate the ``results.json`` of runs and sweeps: tables and overfitting-curve plots.

``SweepReport`` is a Hydra callback: at the end of every ``quadapter -m`` sweep it writes
``comparison.md`` (test perplexity per method and held-out set) and ``curves.png`` (train and
held-out perplexity over training steps, one colour per method) into the sweep dir.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
_COLUMNS = ("run_name", "status", "method", "bits", "model", "dataset")


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``paths`` (path order), with its dir under ``path``."""
    out = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("results.json"))
        for f in files:
            try:
                res = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                res = {"run_name": f.parent.name, "status": f"unreadable ({e})"}
            out.append(res | {"path": str(f.parent)})
    return out


def collect(paths: list[Path]) -> list[dict[str, Any]]:
    """One table row per run: identity columns plus every metric."""
    return [{k: r.get(k) for k in _COLUMNS} | {"path": r["path"]} | dict(r.get("metrics", {}))
            for r in load_results(paths)]


def format_table(rows: list[dict[str, Any]], fmt: str = "markdown") -> str:
    metrics = sorted({k for r in rows for k in r if k.startswith("test/")})
    header = [*_COLUMNS, *metrics]

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    table = [[cell(r.get(h)) for h in header] for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([header, *table])
        return out.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def method_label(result: dict[str, Any]) -> str:
    """``ptq+smoothquant``: the method, and its adapter where that is not implied by the method."""
    adapter = result.get("adapter", "none")
    return result["method"] if adapter in ("none", result["method"]) else f"{result['method']}+{adapter}"


def comparison_table(results: list[dict[str, Any]]) -> str:
    """Methods as rows, held-out sets as columns (the in-distribution set first, marked ID)."""
    done = [r for r in results if r.get("status") == "completed"]
    if not done:
        return "no completed runs"
    in_dist = done[0]["dataset"]
    sets = list(dict.fromkeys(k.split("/")[1] for r in done for k in r["metrics"]))
    sets.sort(key=lambda s: s != in_dist)
    head = ["method", "bits", *[f"{s} ({'ID' if s == in_dist else 'OOD'})" for s in sets]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in done:
        cells = [f"{r['metrics'].get(f'test/{s}/ppl', float('nan')):.2f}" for s in sets]
        lines.append("| " + " | ".join([method_label(r), r["bits"], *cells]) + " |")
    failed = [r["run_name"] for r in results if r.get("status") != "completed"]
    if failed:
        lines.append(f"\nnot completed: {', '.join(failed)}")
    return "\n".join(lines)


def plot_curves(results: list[dict[str, Any]], out: Path) -> bool:
    """Held-out (solid) and train (dashed) perplexity over steps, a panel per set; False if no curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.get("training", {}).get("curves")]
    if not runs:
        return False
    sets = list(dict.fromkeys(k.split("/")[1] for r in runs for row in r["training"]["curves"]
                              for k in row if k.startswith("val/")))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        curves, colour = r["training"]["curves"], colours[i % len(colours)]
        label = f"{method_label(r)} {r['bits']}"
        for ax, s in zip(axes[0], sets):
            pts = [(row["step"], row[f"val/{s}/ppl"]) for row in curves if f"val/{s}/ppl" in row]
            ax.plot(*zip(*pts), "-o", color=colour, label=f"{label} held-out", markersize=3)
            if s == r["dataset"]:
                train = [(row["step"], row["train/ppl"]) for row in curves if "train/ppl" in row]
                if train:
                    ax.plot(*zip(*train), "--", color=colour, label=f"{label} train")
    for ax, s in zip(axes[0], sets):
        in_dist = s == runs[0]["dataset"]
        ax.set(title=f"{s} ({'in-distribution' if in_dist else 'out-of-distribution'})",
               xlabel="step", ylabel="perplexity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


class SweepReport(Callback):
    """Hydra callback: the comparison table and curve plot of a finished sweep, in its dir."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = load_results([sweep_dir])
        if not results:
            return
        table = comparison_table(results)
        (sweep_dir / "comparison.md").write_text(table + "\n")
        plotted = plot_curves(results, sweep_dir / "curves.png")
        print(f"\n{table}\n\ntable: {sweep_dir / 'comparison.md'}"
              + (f"\ncurves: {sweep_dir / 'curves.png'}" if plotted else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quadapter-report",
                                     description="Tabulate the results.json of runs and sweeps.")
    parser.add_argument("paths", nargs="+", type=Path, help="run or sweep directories")
    parser.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"quadapter-report: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = collect(args.paths)
    if not rows:
        print(f"no results.json under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    print(format_table(rows, args.format))
    return 0
