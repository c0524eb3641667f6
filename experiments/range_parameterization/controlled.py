"""Controlled experiment of You, Park et al. (2024), "How to Parameterize Asymmetric Quantization
Ranges for QAT": how each learnable-range parameterization trains across bit-widths and learning
rates, with nothing else learning.

The problem is a single linear layer whose input is quantized: ``y = Q(x)·W`` regressed toward
the full-precision output ``x·W`` (normalized MSE, ``‖Q(x)W − xW‖² / ‖xW‖²``). ``x`` is a GELU
output (asymmetric: [-0.17, ~12], a long right tail), ``W`` is fixed, and only the activation
quantizer's range trains, from its min-max calibration, as QAT initializes it. So every difference
between runs is the parameterization's: same data, same init (all four give the same loss at step
0, bit for bit), same optimizer and step budget. The quantizer is ``quadapter.quant.FakeQuantizer``
itself (per tensor, asymmetric), the one QAT uses.

Swept: bits × learning rate × optimizer (Adam, as QAT uses, which normalizes every parameter's
step to about ``lr``; plain SGD, where the raw gradient magnitudes — and LSQ's gradient scale on
scale/offset — decide the step) × parameterization. Constant learning rate, full batch, seed 0:
deterministic.

    python experiments/range_parameterization/controlled.py --out DIR

writes ``runs.csv`` (one row per run), ``summary.md`` (the tables it prints) and the plots
``loss_vs_steps_<optimizer>.png`` and ``final_loss_vs_lr_<optimizer>.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from quadapter.quant import FakeQuantizer

# (learnable, sigmoid) and the label used in tables and plots
PARAMETERIZATIONS: dict[str, tuple[str, bool]] = {
    "scale_offset": ("scale_offset", False),
    "min_max": ("min_max", False),
    "beta_gamma": ("beta_gamma", False),
    "beta_gamma+sigmoid": ("beta_gamma", True),
}
BITS = (2, 3, 4, 6, 8)
# Learning rates per optimizer: Adam's steps are ~lr per parameter whatever the gradient; lr 1 is
# past what anyone would use, there to find where each parameterization breaks. SGD's steps are
# lr × gradient, and the gradients here are small (the loss is ~4^-bits), so its grid runs higher.
LRS = {"adam": (1e-4, 1e-3, 1e-2, 1e-1, 1.0), "sgd": (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)}
OPTIMIZERS = tuple(LRS)
COLLAPSED = 0.01  # "collapsed": the learned range is narrower than this fraction of the initial one
SPIKE = 2.0  # "spiked": the loss rose above this multiple of its initial value at some step
CONVERGED = 0.9  # "converged": this fraction of the best achievable loss reduction is reached


@dataclass(frozen=True)
class Problem:
    """Quantizer input ``x`` [n, channels], fixed weight ``w`` [channels, out], FP target ``x·w``."""

    x: torch.Tensor
    w: torch.Tensor
    target: torch.Tensor


def make_problem(seed: int = 0, n: int = 256, channels: int = 32, out: int = 16,
                 tail_df: int | None = 3) -> Problem:
    """GELU of Student-t (``tail_df`` degrees of freedom; None: Gaussian) with per-channel spreads
    1.5-4.5: asymmetric, with rare large values, so min-max ranges are too wide at every bit-width.
    """
    gen = torch.Generator().manual_seed(seed)
    spread = 1.5 + 3.0 * torch.rand(channels, generator=gen)
    z = torch.randn(n, channels, generator=gen)
    if tail_df is not None:  # t = z / sqrt(chi²_df / df)
        chi2 = torch.randn(tail_df, n, channels, generator=gen).square().sum(0)
        z = z / (chi2 / tail_df).sqrt()
    x = F.gelu(z * spread)
    w = torch.randn(channels, out, generator=gen) / math.sqrt(channels)
    return Problem(x, w, x @ w)


def nmse(problem: Problem, quantizer: FakeQuantizer) -> torch.Tensor:
    err = quantizer(problem.x) @ problem.w - problem.target
    return err.square().mean() / problem.target.square().mean()


def calibrated_quantizer(problem: Problem, bits: int, parameterization: str) -> FakeQuantizer:
    """Per-tensor asymmetric quantizer, min-max calibrated on ``x``, its range learnable."""
    learnable, sigmoid = PARAMETERIZATIONS[parameterization]
    q = FakeQuantizer(bits, symmetric=False, granularity="per_tensor", estimator="minmax",
                      learnable=learnable, sigmoid=sigmoid)
    q.calibrate()
    q(problem.x)
    return q.freeze()


def learned_range(q: FakeQuantizer) -> tuple[float, float]:
    """The representable range [s·(qmin − z), s·(qmax − z)] the learned qparams give now."""
    with torch.no_grad():
        s, z = q.learned_range(1)
    return float(s * (q.qmin - z)), float(s * (q.qmax - z))


def train_range(problem: Problem, bits: int, parameterization: str, lr: float,
                optimizer: str = "adam", steps: int = 300) -> dict[str, Any]:
    """Train only the range; ``losses[t]`` is the loss before step t+1 (``losses[0]``: at init).

    A non-finite loss stops the run (``nonfinite``); its curve ends there.
    """
    q = calibrated_quantizer(problem, bits, parameterization)
    init_range = learned_range(q)
    params = q.range_parameters()
    opt = (torch.optim.Adam(params, lr=lr) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr))
    losses: list[float] = []
    nonfinite = False
    for step in range(steps + 1):
        loss = nmse(problem, q)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            nonfinite = True
            break
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"bits": bits, "lr": lr, "optimizer": optimizer, "parameterization": parameterization,
            "losses": losses, "nonfinite": nonfinite, "init_range": init_range,
            "final_range": learned_range(q)}


def steps_to(losses: list[float], threshold: float) -> int | None:
    """First step whose loss is at or below ``threshold``; None if never."""
    return next((t for t, v in enumerate(losses) if v <= threshold), None)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: final/best loss, steps to converge, stability flags, learned range.

    Convergence is measured against the best loss any run reached at that bit-width (L*): a run
    has converged at the first step where ``loss ≤ L* + (1 − CONVERGED)·(L0 − L*)``.
    """
    best_at = {}
    for r in runs:
        finite = [v for v in r["losses"] if math.isfinite(v)]
        best_at[r["bits"]] = min(best_at.get(r["bits"], math.inf), *finite)
    rows = []
    for r in runs:
        losses, l0 = r["losses"], r["losses"][0]
        l_star = best_at[r["bits"]]
        final = losses[-1]
        tail = losses[-max(2, len(losses) // 10):]
        mean_tail = sum(tail) / len(tail)
        rows.append({
            "optimizer": r["optimizer"], "bits": r["bits"], "lr": r["lr"],
            "parameterization": r["parameterization"], "steps": len(losses) - 1,
            "loss_init": l0, "loss_final": final,
            "loss_best": min(v for v in losses if math.isfinite(v)),
            "peak_over_init": max(losses) / l0,  # > 1: the loss rose above where it started
            "steps_to_converge": steps_to(losses, l_star + (1 - CONVERGED) * (l0 - l_star)),
            "nonfinite": r["nonfinite"],
            "collapsed": (r["final_range"][1] - r["final_range"][0])
            < COLLAPSED * (r["init_range"][1] - r["init_range"][0]),
            "worse_than_init": not final < l0,  # no progress at all, or moved away (NaN counts)
            # relative spread of the last 10% of the curve: oscillation, not convergence
            "tail_rel_std": (math.sqrt(sum((v - mean_tail) ** 2 for v in tail) / len(tail))
                             / mean_tail if math.isfinite(mean_tail) and mean_tail > 0 else math.nan),
            "range_init": "[{:.3g}, {:.3g}]".format(*r["init_range"]),
            "range_final": "[{:.3g}, {:.3g}]".format(*r["final_range"]),
        })
    return rows


def run_sweep(bits: tuple[int, ...] = BITS, lrs: dict[str, tuple[float, ...]] | None = None,
              parameterizations: tuple[str, ...] = tuple(PARAMETERIZATIONS),
              steps: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """Every combination on the same problem; ``lrs``: optimizer -> its learning rates."""
    problem = make_problem(seed)
    runs = []
    for optimizer, grid in (LRS if lrs is None else lrs).items():
        for b in bits:
            for lr in grid:
                for name in parameterizations:
                    torch.manual_seed(seed)
                    runs.append(train_range(problem, b, name, lr, optimizer, steps))
    return runs


# -- outputs -----------------------------------------------------------------------------------

def _fmt_loss(row: dict[str, Any]) -> str:
    if row["nonfinite"]:
        return "NaN"
    text = f"{row['loss_final']:.3g}"
    if row["collapsed"]:
        return text + " ✗"
    return text + " ↑" if row["worse_than_init"] else text


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """Per optimizer: final NMSE, and steps to converge, as (bits, lr) × parameterization."""
    names = list(dict.fromkeys(r["parameterization"] for r in rows))
    out = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
        sub = [r for r in rows if r["optimizer"] == optimizer]
        index = {(r["bits"], r["lr"], r["parameterization"]): r for r in sub}
        keys = list(dict.fromkeys((r["bits"], r["lr"]) for r in sub))
        steps = sub[0]["steps"]
        for title, cell in (
            (f"final NMSE after {steps} steps ({optimizer}; ↑ = not below the init loss, ✗ = range "
             f"collapsed below {COLLAPSED:.0%} of its initial width)", _fmt_loss),
            (f"steps to {CONVERGED:.0%} of the best achievable reduction ({optimizer}; — = not "
             f"within {steps})",
             lambda r: "—" if r["steps_to_converge"] is None else str(r["steps_to_converge"])),
        ):
            out.append(f"**{title}**\n")
            out.append("| bits | lr | init | " + " | ".join(names) + " |")
            out.append("|---|---|---|" + "---|" * len(names))
            for b, lr in keys:
                present = [index[(b, lr, n)] for n in names if (b, lr, n) in index]
                init = present[0]["loss_init"]
                cells = [cell(index[(b, lr, n)]) if (b, lr, n) in index else "" for n in names]
                out.append(f"| {b} | {lr:g} | {init:.3g} | " + " | ".join(cells) + " |")
            out.append("")
    out.append(stability_table(rows))
    return "\n".join(out)


def stability_table(rows: list[dict[str, Any]]) -> str:
    """Per optimizer and parameterization: how many of the (bits, lr) runs failed, and how."""
    lines = ["**stability per parameterization (counts over bits × lr)**\n",
             "| optimizer | parameterization | runs | NaN | collapsed | not below init "
             f"| spiked (peak > {SPIKE:g}× init) | oscillating (tail std > 5%) | converged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
        for name in dict.fromkeys(r["parameterization"] for r in rows):
            sub = [r for r in rows if r["optimizer"] == optimizer and r["parameterization"] == name]
            osc = sum(1 for r in sub if not r["tail_rel_std"] <= 0.05)
            conv = sum(1 for r in sub if r["steps_to_converge"] is not None)
            spiked = sum(1 for r in sub if not r["peak_over_init"] <= SPIKE)
            lines.append(f"| {optimizer} | {name} | {len(sub)} | {sum(r['nonfinite'] for r in sub)} "
                         f"| {sum(r['collapsed'] for r in sub)} | {sum(r['worse_than_init'] for r in sub)} "
                         f"| {spiked} | {osc} | {conv} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Per optimizer: loss vs steps (rows = lr, columns = bits) and final loss vs lr (per bits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(PARAMETERIZATIONS)
    colours = dict(zip(names, ("tab:red", "tab:blue", "tab:green", "tab:olive"), strict=True))
    written = []
    for optimizer in dict.fromkeys(r["optimizer"] for r in runs):
        sub = [r for r in runs if r["optimizer"] == optimizer]
        bits = sorted({r["bits"] for r in sub})
        lrs = sorted({r["lr"] for r in sub})
        fig, axes = plt.subplots(len(lrs), len(bits), figsize=(3.4 * len(bits), 2.6 * len(lrs)),
                                 squeeze=False, sharex=True)
        for r in sub:
            ax = axes[lrs.index(r["lr"])][bits.index(r["bits"])]
            ax.plot(r["losses"], color=colours[r["parameterization"]], lw=1.2,
                    label=r["parameterization"])
            if r["nonfinite"]:
                ax.plot(len(r["losses"]) - 2, r["losses"][-2], "x", color=colours[r["parameterization"]])
        for i, lr in enumerate(lrs):
            for j, b in enumerate(bits):
                ax = axes[i][j]
                ax.set_yscale("log")
                ax.set_title(f"{b}-bit, lr {lr:g}", fontsize=9)
                if j == 0:
                    ax.set_ylabel("NMSE")
                if i == len(lrs) - 1:
                    ax.set_xlabel("step")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"range-only QAT of one layer's input quantizer ({optimizer}): loss vs steps")
        fig.tight_layout()
        path = out / f"loss_vs_steps_{optimizer}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        written.append(path)

        rsub = [r for r in rows if r["optimizer"] == optimizer]
        fig, axes = plt.subplots(1, len(bits), figsize=(3.4 * len(bits), 3.0), squeeze=False)
        for j, b in enumerate(bits):
            ax = axes[0][j]
            ax.axhline(1.0, color="grey", ls=":", lw=1, label="init (min-max range)")
            for name in names:
                pts = sorted((r["lr"], r["loss_final"] / r["loss_init"]) for r in rsub
                             if r["bits"] == b and r["parameterization"] == name)
                xs = [p[0] for p in pts]
                ys = [p[1] if math.isfinite(p[1]) else math.nan for p in pts]
                ax.plot(xs, ys, "-o", ms=3, color=colours[name], label=name)
            ax.set(xscale="log", yscale="log", title=f"{b}-bit", xlabel="learning rate")
            if j == 0:
                ax.set_ylabel(f"final / initial NMSE ({rsub[0]['steps']} steps)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"final loss vs learning rate ({optimizer})")
        fig.tight_layout()
        path = out / f"final_loss_vs_lr_{optimizer}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="directory for the tables and plots")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--bits", type=int, nargs="+", default=list(BITS), help="bit-widths swept")
    for opt, grid in LRS.items():
        p.add_argument(f"--{opt}-lrs", type=float, nargs="*", default=list(grid),
                       help=f"{opt} learning rates swept (none: skip {opt})")
    p.add_argument("--seed", type=int, default=0, help="data, weight and init seed")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # small tensors; also keeps runs bit-for-bit reproducible
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lrs = {opt: tuple(getattr(args, f"{opt}_lrs")) for opt in LRS}
    runs = run_sweep(tuple(args.bits), {k: v for k, v in lrs.items() if v}, steps=args.steps,
                     seed=args.seed)
    rows = summarize(runs)
    seconds = time.perf_counter() - start
    write_csv(rows, args.out / "runs.csv")
    problem = make_problem(args.seed)
    header = (f"range parameterizations, controlled: {len(runs)} runs x {args.steps} steps, "
              f"x {tuple(problem.x.shape)} in [{problem.x.min():.3g}, {problem.x.max():.3g}], "
              f"seed {args.seed}\n")
    summary = header + "\n" + markdown_tables(rows)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    print(f"time: {seconds:.0f} s")
    if not args.no_plots:
        for path in plot(runs, rows, args.out):
            print(f"plot: {path}")
    print(f"table: {args.out / 'summary.md'}\nruns: {args.out / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
