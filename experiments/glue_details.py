"""Print what `quadapter-report` does not for GLUE sweeps: each run's trainable share, effective
weight bits, model size and compression, dev metrics at every curve point and its cost.

    python experiments/glue_details.py SWEEP_DIR [SWEEP_DIR ...]

Markdown on stdout, so the numbers quoted in experiments/glue_prequant.md and glue_progressive.md are
exactly what this prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[Path]) -> None:
    runs = [json.loads(f.read_text()) for root in paths for f in sorted(root.rglob("results.json"))]
    runs = [r for r in runs if r.get("task") == "glue"]
    print("| run | method | criterion | bits | seed | accuracy | f1 | trainable params | trainable share | "
          "effective weight bits | size (MB) | compression | minutes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        part = r.get("prequant") or r.get("lora") or {}
        metrics = {k.split("/")[-1]: v for k, v in r["metrics"].items()}
        share = part.get("trainable_share", 1.0)  # fp, ptq's fine-tuning and qat train every weight
        size = (r.get("quantization") or {}).get("model_size") or {}
        bits = part.get("effective_weight_bits", size.get("bits_per_quantized_weight")
                        or ("" if r["bits"] == "fp" else r["bits"]))
        megabytes = f"{size['megabytes']:.2f}" if size else ""
        compression = f"{size['compression']:.2f}x" if size else ""
        row = r["run_name"].replace(f"-{r['model']}-{r['dataset']}", "")
        print(f"| {row} | {r['method']} | {(part.get('criterion') or '')} | {r['bits']} | {r['seed']} | "
              f"{metrics.get('accuracy', float('nan')):.2f} | {metrics.get('f1', float('nan')):.2f} | "
              f"{part.get('trainable_params', 'all')} | {100 * share:.3f}% | "
              f"{bits if isinstance(bits, str) else f'{bits:.3f}'} | {megabytes} | {compression} | "
              f"{r['timings']['total_s'] / 60:.1f} |")
    print("\n## Curves (dev accuracy / F1 at each curve point)\n")
    for r in runs:
        curve = (r.get("training") or {}).get("curves") or []
        name = r["dataset"]
        points = ", ".join(f"{p['step']}: {p.get(f'val/{name}/accuracy', float('nan')):.1f}"
                           f"/{p.get(f'val/{name}/f1', float('nan')):.1f}" for p in curve)
        print(f"- {r['run_name']} seed {r['seed']}: {points}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
