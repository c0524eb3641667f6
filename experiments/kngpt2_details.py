"""What `quadapter-report` does not print about experiment=kngpt2: per row the student (kind, parameters,
compression), whether it was distilled, the pretraining's cost, and the held-out perplexity right after the
compression (step 0 of the curve) and at the end of the light pretraining; then each student's curve.

    python experiments/kngpt2_details.py multirun/kngpt2 > experiments/results/kngpt2/details.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SETS = ("ptb", "wikitext2", "lambada")


def runs(sweep: Path) -> dict[str, dict]:
    """Completed runs of the sweep by row name (the run dir's name up to the model)."""
    found = {}
    for file in sorted(sweep.glob("*/results.json")):
        res = json.loads(file.read_text())
        if res.get("status") == "completed":
            found[file.parent.name.split("-")[0]] = res
    return found


def parameters(res: dict, rows: dict[str, dict]) -> tuple[int | None, float | None]:
    """The model's parameters, and the teacher's over them; a PTQ row of a student counts its student's."""
    if res.get("student"):
        s = res["student"]
        return s["params_after"], s["params_before"] / s["params_after"]
    source = res["run_name"].split("-")[0].removesuffix("_w8a8")
    if source in rows and rows[source].get("student"):
        return parameters(rows[source], rows)
    teacher = next((r["student"]["params_before"] for r in rows.values() if r.get("student")), None)
    return teacher, 1.0 if teacher else None


def summary(rows: dict[str, dict]) -> list[str]:
    head = " | ".join(f"{s} step 0 → end" for s in SETS)
    lines = [f"| row | student | parameters | compression | KD | pretrain s | {head} | " + " | ".join(
        f"test {s}" for s in SETS) + " |", "|" + "---|" * (6 + 2 * len(SETS))]
    for name, res in rows.items():
        params, ratio = parameters(res, rows)
        student = res.get("student") or {}
        curves = (res.get("training") or {}).get("curves") or []
        moves = []
        for s in SETS:
            key = f"val/{s}/ppl"
            pts = [c[key] for c in curves if key in c]
            moves.append(f"{pts[0]:.1f} → {pts[-1]:.1f}" if pts else "")
        tests = [f"{res['metrics'][f'test/{s}/ppl']:.2f}" for s in SETS]
        kd = "yes" if res.get("distill") else ("no" if student else "")
        seconds = f"{res['timings']['method_s']:.0f}" if student else ""
        lines.append(f"| {name} | {student.get('kind', '')} | {params or '':,} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} | {kd} | {seconds} | " + " | ".join(moves)
                     + " | " + " | ".join(tests) + " |")
    return lines


def curves(rows: dict[str, dict], held_out: str) -> list[str]:
    trained = {n: r["training"]["curves"] for n, r in rows.items() if r.get("student")}
    if not trained:
        return []
    steps = [c["step"] for c in next(iter(trained.values()))]
    lines = [f"### Held-out {held_out} perplexity (first 8,192 tokens) over the light pretraining", "",
             "| row | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, points in trained.items():
        lines.append(f"| {name} | " + " | ".join(f"{c[f'val/{held_out}/ppl']:.1f}" for c in points) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep dir of experiment=kngpt2")
    rows = runs(parser.parse_args().sweep)
    print("## Students, cost and perplexity\n")
    print("\n".join(summary(rows)) + "\n")
    for s in SETS:
        print("\n".join(curves(rows, s)))


if __name__ == "__main__":
    main()
