"""What `quadapter-report` does not print about weight-only PTQ runs (experiment=blockptq): per run the
effective bits per weight, the method's wall-clock seconds and peak memory, and the block engine's L2
before/after per unit, as markdown.

    python experiments/blockptq_details.py multirun/blockptq/main [more sweep or run dirs] > details.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean


def runs(paths: list[Path]) -> list[dict]:
    found = []
    for path in paths:
        files = [path / "results.json"] if (path / "results.json").is_file() else sorted(path.glob("*/results.json"))
        found += [json.loads(f.read_text()) | {"_dir": f.parent.name} for f in files]
    return [r for r in found if r.get("status") == "completed"]


def row_name(res: dict) -> str:
    return res["run_name"].split("-")[0] if res["method"] != "fp" else "fp"


def summary_table(results: list[dict]) -> list[str]:
    lines = ["| model | row | bits | granularity | bits/weight | method s | peak MB | units | reverted | "
             "mean L2 before → after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        quant = res.get("quantization") or {}
        size = quant.get("model_size") or {}
        weight = (quant.get("weight") or {})
        gran = weight.get("granularity", "")
        if weight.get("group_size"):
            gran += f" {weight['group_size']}"
        bp = res.get("blockptq") or {}
        units = bp.get("units") or []
        l2 = (f"{mean(u['l2_before'] for u in units):.4g} → {mean(u['l2_after'] for u in units):.4g}"
              if units else "")
        bits_per = size.get("bits_per_quantized_weight")
        lines.append(f"| {res['model']} | {row_name(res)} | {res['bits']} | {gran} | "
                     f"{'' if bits_per is None else f'{bits_per:.3f}'} | {res['timings']['method_s']:.0f} | "
                     f"{bp.get('peak_memory_mb', '')} | {len(units) or ''} | "
                     f"{bp.get('reverted_units', '') if units else ''} | {l2} |")
    return lines


def unit_table(results: list[dict], model: str) -> list[str]:
    rows = [r for r in results if r["model"] == model and r.get("blockptq")]
    if not rows:
        return []
    lines = [f"### {model}: per unit (first block index: L2 before → after, seconds, peak MB)", ""]
    for res in rows:
        cells = [f"{u['unit']}: {u['l2_before']:.3g} → {u['l2_after']:.3g}{' (reverted)' if u.get('reverted') else ''}"
                 f", {u['seconds']:.0f} s, {u['peak_memory_mb']:.0f} MB" for u in res["blockptq"]["units"]]
        lines.append(f"- **{row_name(res)}** (k = {res['blockptq']['unit_size']}, m = "
                     f"{res['blockptq']['target_offset']}): " + "; ".join(cells))
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs or run dirs")
    args = parser.parse_args()
    results = runs(args.paths)
    print("\n".join(summary_table(results)))
    print()
    for model in dict.fromkeys(r["model"] for r in results):
        print("\n".join(unit_table(results, model)))


if __name__ == "__main__":
    main()
