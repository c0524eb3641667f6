"""Render a report as markdown, CSV or a booktabs LaTeX tabular.

Markdown and LaTeX carry their notes (failed runs, protocol footnotes, sources) below the tables;
CSV is one machine-readable table (the split fields are columns) and its notes go elsewhere
(``quadapter-report`` prints them on stderr).
"""

from __future__ import annotations

import csv
import io

from quadapter.report.pivot import Cell, Report, fmt_number

FORMATS = ("markdown", "csv", "latex")
MISSING = {"markdown": "—", "csv": "missing", "latex": "---"}  # a cell no run reached
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def cell_text(cell: Cell, fmt: str, precision: int = 2) -> str:
    """``206.74``, ``206.74 ± 1.20 (n=3)``, ``failed``, ``—``; footnote marks as `` [1]``."""
    if cell.values:
        text = fmt_number(cell.mean, precision)
        extra = [f"n={len(cell.values)}"] if len(cell.values) > 1 else []
        if len(cell.values) > 1:
            text += (r" $\pm$ " if fmt == "latex" else " ± ") + fmt_number(cell.std, precision)
        extra += [f"{n} {what}" for what, n in (("failed", cell.failed), ("incomplete", cell.incomplete)) if n]
        text += f" ({', '.join(extra)})" if extra else ""
    elif cell.failed or cell.incomplete:
        text = ", ".join(what for what, n in (("failed", cell.failed), ("incomplete", cell.incomplete)) if n)
    else:
        return MISSING[fmt]
    return text + "".join(f" [{m}]" for m in cell.marks)


def _title(split: list[tuple[str, str]]) -> str:
    return ", ".join(f"{f}: {v}" for f, v in split)


def markdown(report: Report, precision: int = 2) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    parts = []
    for t in report.tables:
        lines = [f"### {_title(t.split)}", ""] if len(report.tables) > 1 else []
        head = [*t.header, *t.columns]
        lines += [line(head), "|" + "---|" * len(head)]
        lines += [line([*r.header, *(cell_text(c, "markdown", precision) for c in r.cells)]) for r in t.rows]
        lines += [""] + [f"- {one_line(n)}" for n in t.notes] if t.notes else []
        parts.append("\n".join(lines))
    if report.notes:
        parts.append("\n".join(f"- {one_line(n)}" for n in report.notes))
    return "\n\n".join(parts)


def csv_table(report: Report, precision: int = 2) -> str:
    """All tables as one CSV: the row and split fields, then every value column of any table."""
    if not report.tables:
        return ""
    columns = list(dict.fromkeys(c for t in report.tables for c in t.columns))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*report.tables[0].header, *columns])
    for t in report.tables:
        for r in t.rows:
            by_col = {c: cell_text(cell, "csv", precision) for c, cell in zip(t.columns, r.cells, strict=True)}
            writer.writerow([*r.header, *(by_col.get(c, MISSING["csv"]) for c in columns)])
    return out.getvalue()


def latex(report: Report, precision: int = 2) -> str:
    """One booktabs ``tabular`` per table; its notes as full-width rows, the others as comments."""
    parts = []
    for t in report.tables:
        width = len(t.header) + len(t.columns)
        lines = [f"% {_title(t.split)}",
                 r"\begin{tabular}{" + "l" * len(t.header) + "r" * len(t.columns) + "}", r"\toprule",
                 " & ".join(latex_escape(h) for h in [*t.header, *t.columns]) + r" \\", r"\midrule"]
        lines += [" & ".join([*(latex_escape(h) for h in r.header),
                              *(cell_text(c, "latex", precision) for c in r.cells)]) + r" \\" for r in t.rows]
        lines.append(r"\bottomrule")
        lines += [rf"\multicolumn{{{width}}}{{l}}{{\footnotesize {latex_escape(one_line(n))}}} \\" for n in t.notes]
        lines.append(r"\end{tabular}")
        parts.append("\n".join(lines))
    if report.notes:
        parts.append("\n".join(f"% {one_line(n)}" for n in report.notes))
    return "\n\n".join(parts)


def one_line(note: str) -> str:
    """Notes carry error messages: one line each, so lists and LaTeX comments stay intact."""
    return " ".join(note.split())


def render(report: Report, fmt: str = "markdown", precision: int = 2) -> str:
    return {"markdown": markdown, "csv": csv_table, "latex": latex}[fmt](report, precision)
