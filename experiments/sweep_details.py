"""Print what `quadapter-report` does not: activation-outlier statistics and the curve points.

    python experiments/sweep_details.py SWEEP_DIR [SWEEP_DIR ...]

1. Outliers: per model (e.g. ``proxy`` and ``proxy+outliers``) and quantized site type, the
   largest channel absmax over the median channel's and the kurtosis of the site's input, as
   measured while calibrating its plain PTQ run (``outliers`` in results.json), block by block.
2. Curves: for every run that trained, held-out perplexity per set (and the running train
   perplexity) at each logged step (``training.curves``).

Markdown on stdout, so the numbers quoted in experiments/*.md are exactly what this prints.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

_BLOCK = re.compile(r"(?:^|\.)(?:h|layers)\.(\d+)\.(.+)$")  # GPT-2's transformer.h.N, Llama's model.layers.N
_LISTED = 12  # deeper models get worst / median over blocks instead of one number per block


def load(paths: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for root in paths:
        for f in sorted(root.rglob("results.json"), key=lambda p: str(p)):
            res = json.loads(f.read_text())
            if res.get("status") == "completed":
                runs.append(res | {"dir": f.parent.name})
    return runs


def label(res: dict[str, Any]) -> str:
    adapter = res.get("adapter", "none")
    method = res["method"] if adapter in ("none", res["method"]) else f"{res['method']}+{adapter}"
    return f"{method} {res['bits']} {res['model']}"


def outlier_table(runs: list[dict[str, Any]]) -> str:
    """Per model and site type: max/median and kurtosis in block order, from the plain PTQ runs."""
    lines = ["| model | bits | site (input of) | max/median channel absmax, blocks 0.. "
             "| kurtosis, blocks 0.. |", "|---|---|---|---|---|"]
    for res in runs:
        if res["method"] != "ptq" or res.get("adapter", "none") != "none" or not res.get("outliers"):
            continue
        by_site: dict[str, list[tuple[int, dict]]] = {}
        for name, stats in res["outliers"].items():
            m = _BLOCK.search(name)
            if m:
                site = m.group(2).removesuffix(".input")
                by_site.setdefault(site, []).append((int(m.group(1)), stats))
        for site, blocks in by_site.items():
            blocks.sort(key=lambda b: b[0])
            ratios, kurt = (_per_block([s[key] for _, s in blocks]) for key in ("max_over_median", "kurtosis"))
            lines.append(f"| {res['model']} | {res['bits']} | {site} | {ratios} | {kurt} |")
    return "\n".join(lines)


def _per_block(values: list[float]) -> str:
    """One number per block, or for deep models the worst block and the median over blocks."""
    if len(values) <= _LISTED:
        return " / ".join(f"{v:.1f}" for v in values)
    worst = max(range(len(values)), key=values.__getitem__)
    median = sorted(values)[len(values) // 2]
    return f"worst {values[worst]:.1f} (block {worst}), median {median:.1f} over {len(values)} blocks"


def curve_tables(runs: list[dict[str, Any]]) -> str:
    out = []
    for res in runs:
        curves = (res.get("training") or {}).get("curves")
        if not curves:
            continue
        sets = list(dict.fromkeys(k.split("/")[1] for row in curves for k in row if k.startswith("val/")))
        head = ["step", "train", *[f"{s} ({'ID' if s == res['dataset'] else 'OOD'})" for s in sets]]
        out += [f"**{label(res)}** ({res['dir']})", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        for row in curves:
            cells = [str(row["step"]), f"{row['train/ppl']:.1f}" if "train/ppl" in row else ""]
            cells += [f"{row[f'val/{s}/ppl']:.1f}" if f"val/{s}/ppl" in row else "" for s in sets]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = load([Path(a) for a in argv])
    if not runs:
        print(f"no completed results.json under {', '.join(argv)}", file=sys.stderr)
        return 1
    print("## Activation outliers (plain PTQ runs, calibration inputs)\n")
    has_ptq = any(r["method"] == "ptq" and r.get("adapter", "none") == "none" and r.get("outliers") for r in runs)
    print(outlier_table(runs) if has_ptq else "(no plain PTQ run in these sweeps: none measured)")
    print("\n## Curves (held-out perplexity on the curve subsets; train = running mean)\n")
    print(curve_tables(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
