"""Aggregate the ``results.json`` of runs and sweeps into one table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

_COLUMNS = ("run_name", "status", "method", "bits", "model", "dataset")


def collect(paths: list[Path]) -> list[dict[str, Any]]:
    """One row per ``results.json`` found under ``paths``, in path order."""
    rows = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("results.json"))
        for f in files:
            try:
                res = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                rows.append({"run_name": f.parent.name, "status": f"unreadable ({e})", "path": str(f)})
                continue
            row = {k: res.get(k) for k in _COLUMNS} | {"path": str(f.parent)}
            row.update({k: v for k, v in res.get("metrics", {}).items()})
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], fmt: str = "markdown") -> str:
    metrics = sorted({k for r in rows for k in r if "/" in k and k.startswith("test/")})
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
