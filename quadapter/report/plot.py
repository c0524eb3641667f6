"""Overfitting curves: the train metric against each held-out set's over training steps.

The metric is the run's primary one (``results.json``'s ``primary_metric``: perplexity for LM runs,
e.g. accuracy for GLUE runs, whose train value is scored on a fixed train subset).
One panel per held-out set, one colour per method (runs that differ only in seed share it), solid
lines for the held-out set, dashed for train: a held-out curve that turns up while train keeps
falling is overfitting to the fine-tuning set. Runs of one method that differ only in their
``run_name`` (the rows of a comparison, e.g. schedules of method=progressive) are labelled by it, and
a multi-stage run's stage boundaries are dotted vertical lines. Curves come from ``results.json``
(``training.curves``), or from the run's ``csv/metrics.csv`` when the run was interrupted.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from quadapter.report.load import IDENTITY, Run

_VARY = tuple(f for f in IDENTITY if f not in ("method", "adapter", "seed", "run_name"))


def run_labels(runs: list[Run]) -> list[str]:
    """The method, plus whatever tells runs of one method apart (bits, model, ...), but not the seed."""
    labels = []
    for r in runs:
        same = [x for x in runs if x.field("method") == r.field("method")]
        varying = [f for f in _VARY if len({x.field(f) for x in same}) > 1]
        combos = {tuple(x.field(f) for f in varying) for x in same}
        if len({x.field("run_name") for x in same}) > len(combos):  # rows of one method told apart by name
            label = r.field("run_name")
        else:
            label = " ".join([r.field("method"), *(r.field(f) for f in varying)])
        labels.append(label + ("" if r.status == "completed" else f" ({r.status})"))
    return labels


def stage_starts(run: Run) -> list[int]:
    """The steps where a multi-stage run (method=progressive: ``training.stages``) starts a stage."""
    stages = (run.result.get("training") or {}).get("stages") or []
    return [int(s["start_step"]) for s in stages if s.get("start_step")]


def plot_curves(runs: list[Run], out: Path | None = None) -> Figure | None:
    """The curves of every run that has them, saved to ``out``; None (and no file) if none has."""
    with_curves = [(r, c) for r in runs if not r.problem for c in [r.curves()] if c]
    if not with_curves:
        return None
    curves_of = [c for _, c in with_curves]
    plotted = [r for r, _ in with_curves]
    metric_of = [r.result.get("primary_metric") or "ppl" for r in plotted]
    sets = list(dict.fromkeys((k.split("/")[1], m) for c, m in zip(curves_of, metric_of, strict=True)
                              for row in c for k in row
                              if k.startswith("val/") and k.endswith(f"/{m}")))
    datasets = [r.result.get("dataset") for r in plotted]
    if not sets:
        return None
    sets.sort(key=lambda s: s[0] not in datasets)  # in-distribution panels first
    fig = Figure(figsize=(5.5 * len(sets), 4.2))
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    colour_cycle = [f"C{i}" for i in range(10)]
    labels = run_labels(plotted)
    colours = {lab: colour_cycle[i % 10] for i, lab in enumerate(dict.fromkeys(labels))}
    for curves, label, m in zip(curves_of, labels, metric_of, strict=True):
        train = [(p["step"], p[f"train/{m}"]) for p in curves if p.get(f"train/{m}") is not None]
        for ax, (s, sm) in zip(axes, sets, strict=True):
            if sm != m:
                continue
            val = [(p["step"], p[f"val/{s}/{m}"]) for p in curves if p.get(f"val/{s}/{m}") is not None]
            if val:
                ax.plot(*zip(*val, strict=True), "-o", color=colours[label], markersize=3, label=f"{label} held-out")
            if train:
                ax.plot(*zip(*train, strict=True), "--", color=colours[label], alpha=0.8, label=f"{label} train")
    for ax, (s, m) in zip(axes, sets, strict=True):
        where = ("in-distribution" if all(d == s for d in datasets)
                 else "out-of-distribution" if s not in datasets else "held-out")
        ax.set(title=f"{s} ({where})", xlabel="step", ylabel="perplexity" if m == "ppl" else f"{m} (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        values = [y for line in ax.get_lines() for y in line.get_ydata()]
        if values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")
        handles = {h.get_label(): h for h in ax.get_lines()}  # seeds share a label: one entry
        ax.legend(handles.values(), handles.keys(), fontsize=7)
        ax.grid(alpha=0.3)
    for run, label, m in zip(plotted, labels, metric_of, strict=True):  # after the scales and legends
        for ax, (_, sm) in zip(axes, sets, strict=True):
            for step in stage_starts(run) if sm == m else []:  # stage boundaries, in the run's colour
                ax.axvline(step, color=colours[label], linestyle=":", linewidth=0.8, alpha=0.5)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=120)
    return fig
