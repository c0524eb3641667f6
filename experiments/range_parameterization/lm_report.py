"""Table and curves of the LM range-parameterization sweep (``experiment=range_parameterization``).

Reads every run's ``results.json`` (test perplexities, ``training.curves``) and ``csv/metrics.csv``
(``train/loss`` every ``trainer.log_every_n_steps`` steps) under a sweep dir, labels runs by the
parameterization they recorded (``quantization.act.learnable`` / ``sigmoid``), and writes

- ``lm_table.md``: per parameterization, held-out perplexity at step 0 (the PTQ init), at the last
  step, the final test perplexity of every set and the train perplexity; and how far the
  learned ranges moved (from the run's last checkpoint, read back through ``quadapter.quant``'s
  own parameterization modules): effective scale / calibrated scale per quantizer side, and how
  many weight channels ended with their scale clamped to the floor (EPS: the channel quantizes
  to ~0);
- ``lm_curves.png``: train loss vs step, and held-out perplexity vs step per set.

    python experiments/range_parameterization/lm_report.py SWEEP_DIR --out DIR
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

ORDER = ("scale_offset", "min_max", "beta_gamma", "beta_gamma+sigmoid")


def label(result: dict[str, Any]) -> str:
    """The parameterization a run used, as the controlled experiment names it."""
    act = result.get("quantization", {}).get("act") or result.get("quantization", {}).get("weight")
    if not act:
        return result.get("quantizer", "?")
    return act["learnable"] + ("+sigmoid" if act.get("sigmoid") else "")


def train_loss(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) rows of the run's CSV log; empty if it has none."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [(int(float(r["step"])), float(r["train/loss"])) for r in rows if r.get("train/loss")]


def range_movement(run_dir: Path, result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per side (act, weight): final effective scale / calibrated scale over every quantizer.

    The calibrated scale is the quantizer's ``scale`` buffer (set at calibration, not trained);
    the final one is what the learned parameterization yields from the checkpoint's parameters.
    """
    ckpt = run_dir / "checkpoints" / "e2e" / "last.ckpt"
    if not ckpt.is_file():
        return {}
    import torch

    from quadapter.quant import make_parameterization, quant_range
    from quadapter.quant.functional import EPS

    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    out = {}
    for side, module in (("act", "input_quantizer"), ("weight", "weight_quantizer")):
        conf = result.get("quantization", {}).get(side)
        if not conf or conf["learnable"] == "none":
            continue
        qmin, qmax = quant_range(conf["bits"], conf["symmetric"])
        ratios, floored = [], 0
        for key in [k for k in state if k.endswith(f".{module}.scale")]:
            prefix = key[: -len("scale")] + "learned_range."
            calibrated = state[key].float()
            unit = torch.ones_like(calibrated)  # placeholder range: the state dict replaces it
            learned = make_parameterization(conf["learnable"], -unit, unit, qmin, qmax,
                                            conf["symmetric"], conf["sigmoid"])
            learned.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                     if k.startswith(prefix)})
            with torch.no_grad():
                scale, _ = learned(1)
            ratios.append((scale / calibrated).flatten())
            floored += int((scale <= EPS).sum())
        r = torch.cat(ratios)
        q = r.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist()
        out[side] = {"scales": r.numel(), "p10": q[0], "median": q[1], "p90": q[2],
                     "floored": floored}
    return out


def load(sweep: Path) -> list[dict[str, Any]]:
    runs = []
    for f in sorted(sweep.rglob("results.json")):
        res = json.loads(f.read_text())
        res["label"], res["dir"] = label(res), f.parent
        res["train_loss"] = train_loss(f.parent)
        res["ranges"] = range_movement(f.parent, res)
        config = f.parent / "config.yaml"  # the run's resolved config, saved by the runner
        res["config"] = yaml.safe_load(config.read_text()) if config.is_file() else {}
        runs.append(res)
    runs.sort(key=lambda r: ORDER.index(r["label"]) if r["label"] in ORDER else len(ORDER))
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    done = [r for r in runs if r.get("status") == "completed"]
    if not done:
        return "no completed runs"
    sets = list(dict.fromkeys(k.split("/")[1] for r in done for k in r["metrics"]))
    first = done[0]
    head = ["parameterization", *[f"{s} val step 0" for s in sets],
            *[f"{s} val step {first['training']['steps']}" for s in sets],
            *[f"{s} test" for s in sets], "train ppl, last 10 steps"]
    lr = first["config"].get("method", {}).get("lr", {})
    lrs = f" (AdamW lr: weights {lr['weights']:g}, ranges {lr['ranges']:g})" if lr else ""
    lines = [f"model {first['model']}, {first['bits']}, fine-tuned on {first['dataset']}, "
             f"{first['training']['steps']} QAT steps{lrs}; val = first eval.val_max_tokens tokens "
             f"of the validation split, test = eval.max_tokens tokens of the test split\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in done:
        curve = r["training"]["curves"]
        start, end = curve[0], curve[-1]
        cells = [*(f"{start.get(f'val/{s}/ppl', math.nan):.2f}" for s in sets),
                 *(f"{end.get(f'val/{s}/ppl', math.nan):.2f}" for s in sets),
                 *(f"{r['metrics'].get(f'test/{s}/ppl', math.nan):.2f}" for s in sets),
                 f"{end.get('train/ppl', math.nan):.2f}"]
        lines.append("| " + " | ".join([r["label"], *cells]) + " |")
    failed = [f"{r['label']} ({r.get('status')})" for r in runs if r.get("status") != "completed"]
    if failed:
        lines.append(f"\nnot completed: {', '.join(failed)}")
    moved = [r for r in done if r["ranges"]]
    if moved:
        lines += ["", "learned scale / calibrated scale after training, over all quantizers of a "
                  "side: median [10th, 90th percentile]; floored = scales clamped to EPS "
                  "(learned s <= 0: the channel quantizes to ~0)\n",
                  "| parameterization | activation scales | weight scales | weight scales floored |",
                  "|---|---|---|---|"]
        for r in moved:
            cells = []
            for side in ("act", "weight"):
                m = r["ranges"].get(side)
                cells.append("" if not m else
                             f"{m['median']:.3g} [{m['p10']:.3g}, {m['p90']:.3g}] (n={m['scales']})")
            w = r["ranges"].get("weight")
            cells.append("" if not w else f"{w['floored']} of {w['scales']}")
            lines.append("| " + " | ".join([r["label"], *cells]) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(ORDER, ("tab:red", "tab:blue", "tab:green", "tab:olive"), strict=True))
    runs = [r for r in runs if r.get("training", {}).get("curves")]
    sets = list(dict.fromkeys(k.split("/")[1] for r in runs for row in r["training"]["curves"]
                              for k in row if k.startswith("val/")))
    fig, axes = plt.subplots(1, 1 + len(sets), figsize=(4.6 * (1 + len(sets)), 3.6), squeeze=False)
    for r in runs:
        c = colours.get(r["label"])
        if r["train_loss"]:
            axes[0][0].plot(*zip(*r["train_loss"], strict=True), color=c, label=r["label"], lw=1.2)
        for ax, s in zip(axes[0][1:], sets, strict=True):
            pts = [(row["step"], row[f"val/{s}/ppl"]) for row in r["training"]["curves"]
                   if f"val/{s}/ppl" in row]
            ax.plot(*zip(*pts, strict=True), "-o", ms=3, color=c, label=r["label"])
    first = runs[0]
    axes[0][0].set(title=f"train loss ({first['dataset']}, logged batches)", xlabel="step",
                   ylabel="loss")
    for ax, s in zip(axes[0][1:], sets, strict=True):
        kind = "in-distribution" if s == first["dataset"] else "out-of-distribution"
        ax.set(title=f"{s} validation ppl ({kind})", xlabel="step", ylabel="perplexity")
        low, high = ax.dataLim.y0, ax.dataLim.y1
        if low > 0 and high / low > 20:  # a collapse would flatten every other curve on a linear axis
            ax.set_yscale("log")
            ax.set_ylabel("perplexity (log scale)")
    axes[0][0].legend(fontsize=8)
    lr = first["config"].get("method", {}).get("lr", {}).get("ranges")
    fig.suptitle(f"QAT with learnable ranges per parameterization: {first['model']}, {first['bits']}"
                 + (f", range lr {lr:g}" if lr is not None else ""))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, help="the sweep dir (hydra.sweep.dir)")
    p.add_argument("--out", type=Path, required=True, help="directory for lm_table.md, lm_curves.png")
    args = p.parse_args(argv)
    runs = load(args.sweep)
    if not runs:
        print(f"no results.json under {args.sweep}")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (args.out / "lm_table.md").write_text(text + "\n")
    print(text)
    plot(runs, args.out / "lm_curves.png")
    print(f"\ntable: {args.out / 'lm_table.md'}\ncurves: {args.out / 'lm_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
