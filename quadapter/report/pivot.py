"""Pivot runs (and published numbers) into comparison tables, one number per cell.

Rows, columns and tables are chosen by field (``method``, ``bits``, ``model``, ``dataset``,
``adapter``, ``quantizer``, ``eval``, ``seed``, ``run_name``, ``run``, a dotted config key, or ``set``,
the held-out set). Defaults: a table per bit-width, a row per method, a column per held-out set,
in-distribution first. Full-precision runs (``bits: fp``) have no bit-width of their own: they are
the reference row of every bit-width's table (and get a table only when there is no other).

A cell holding several runs (seeds, repeats) shows their mean, standard deviation and count, and
the table says in what they differ. A failed or unfinished run shows as such in the cells it was
meant to fill; a cell no run reached is missing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from quadapter.report.load import FIELDS, IDENTITY, INCOMPLETE, Loaded, Run, flat_config, method_label
from quadapter.report.protocol import differing_keys, labels, reference_differences, show, signature
from quadapter.report.reference import Reference

DEFAULT_ROWS, DEFAULT_COLS, DEFAULT_SPLIT = ("method",), ("set",), ("bits",)
NO_SETS = "(no sets recorded)"  # column of a failed run that recorded no held-out sets


@dataclass(frozen=True)
class SetKey:
    """A held-out set as a pivot value: its name and protocol label (label None: any of its protocols)."""

    name: str
    label: str | None = ""

    def matches(self, other: Any) -> bool:
        return isinstance(other, SetKey) and other.name == self.name and self.label in (None, other.label)


@dataclass(frozen=True)
class Layout:
    rows: tuple[str, ...] = DEFAULT_ROWS
    cols: tuple[str, ...] = DEFAULT_COLS
    split: tuple[str, ...] = DEFAULT_SPLIT


def make_layout(rows: list[str] | None = None, cols: list[str] | None = None,
                split: list[str] | None = None) -> Layout:
    """Defaults filled in: ``bits`` splits tables unless placed elsewhere; ``set`` always has a place."""
    r, c = tuple(rows or DEFAULT_ROWS), tuple(cols or DEFAULT_COLS)
    s = tuple(f for f in DEFAULT_SPLIT if f not in r + c) if split is None else tuple(split)
    if "set" not in r + c + s:
        s += ("set",)  # one table per set rather than averaging over sets
    used = r + c + s
    unknown = [f for f in used if f not in FIELDS and "." not in f]
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}: use {', '.join(FIELDS)} "
                         "or a dotted config key (e.g. method.lr.weights)")
    twice = sorted({f for f in used if used.count(f) > 1})
    if twice:
        raise ValueError(f"field(s) {', '.join(twice)} given to more than one of --rows/--cols/--split-by")
    return Layout(r, c, s)


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    failed: int = 0
    incomplete: int = 0
    marks: list[int] = field(default_factory=list)  # footnote numbers
    runs: list[Run] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class Row:
    header: list[str]  # values of the row fields, then of the split fields
    cells: list[Cell]
    reference: str | None = None  # the reference title, for published numbers


@dataclass
class Table:
    split: list[tuple[str, str]]  # (field, value) shared by the table
    header: list[str]  # names of the row-label columns
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    tables: list[Table]
    notes: list[str]


@dataclass
class _Entry:
    """One number (or failure) to place: a run's set, or a published number."""

    fields: dict[str, Any]  # field -> value; None or a SetKey with label None match any
    state: str = "value"  # value | failed | incomplete
    value: float | None = None
    order: float = 0
    run: Run | None = None
    ref: Reference | None = None
    proto: dict[str, Any] = field(default_factory=dict)
    fp: bool = False
    number: dict[str, Any] = field(default_factory=dict)  # a reference's entry as written


def _matches(a: Any, b: Any) -> bool:
    return a is None or a == b or (isinstance(a, SetKey) and a.matches(b))


def _concrete(v: Any) -> Any:
    if isinstance(v, SetKey) and v.label is None:
        return SetKey(v.name or NO_SETS, "")
    return SetKey(NO_SETS, "") if v is None else v


def _run_entries(runs: list[Run], lay: Layout, metric: str, named: bool = False) -> list[_Entry]:
    """The runs' ``test/<set>/<metric>`` numbers; ``named``: the column says the metric too."""
    entries = []
    for i, run in enumerate(runs):
        if run.problem:
            continue
        base = {f: run.field(f) for f in lay.rows + lay.cols + lay.split if f != "set"}
        common = dict(order=i, run=run, fp=run.result.get("bits") == "fp")
        if run.status == "completed":
            for s in run.sets(metric):
                entries.append(_Entry(base | {"set": SetKey(f"{s} {metric}" if named else s, None)},
                                      value=float(run.result["metrics"][f"test/{s}/{metric}"]),
                                      proto=(run.result.get("protocol") or {}).get(s) or {}, **common))
        else:
            state = "failed" if run.status == "failed" else "incomplete"
            for s in run.sets(metric) or [None]:
                key = SetKey(f"{s} {metric}" if named else s, None) if s else None
                entries.append(_Entry(base | {"set": key}, state=state, **common))
    return entries


def _ref_entries(references: list[Reference], lay: Layout, metric: str) -> list[_Entry]:
    entries = []
    for j, ref in enumerate(references):
        for k, num in enumerate(ref.numbers):
            if not isinstance(num.get(metric), (int, float)):
                continue
            fields = {f: (method_label(num) if f == "method" else str(num[f])) if f in num else None
                      for f in lay.rows + lay.cols + lay.split if f != "set"}
            entries.append(_Entry(fields | {"set": SetKey(num["set"], None)}, value=float(num[metric]),
                                  order=1e9 + j * 1e6 + k, ref=ref, proto=num.get("protocol") or {},
                                  fp=str(num.get("bits")) == "fp", number=num))
    return entries


def _label_protocols(entries: list[_Entry]) -> tuple[dict[SetKey, dict], list[str]]:
    """Give every measured number its set's protocol column; notes for sets measured several ways."""
    sigs: dict[str, dict[tuple, dict]] = {}
    for e in entries:
        if e.state == "value":
            sigs.setdefault(e.fields["set"].name, {}).setdefault(signature(e.proto), e.proto)
    columns, column_of, notes = {}, {}, []
    for name, by_sig in sigs.items():
        protos = list(by_sig.values())
        for sig, proto, lab in zip(by_sig, protos, labels(protos), strict=True):
            column_of[(name, sig)] = SetKey(name, lab)
            columns[SetKey(name, lab)] = proto
        if len(protos) > 1:
            keys = differing_keys(protos)
            each = "; ".join(f"[{lab}] = " + ", ".join(show(k, p.get(k)) for k in keys)
                             for p, lab in zip(protos, labels(protos), strict=True))
            notes.append(f"{name}: measured under {len(protos)} protocols (differing in {', '.join(keys)}), "
                         f"one column each: {each}")
    for e in entries:
        if e.state == "value":
            e.fields["set"] = column_of[(e.fields["set"].name, signature(e.proto))]
    return columns, notes


class _Builder:
    def __init__(self, lay: Layout, columns: dict[SetKey, dict]):
        self.lay, self.columns = lay, columns
        self.bits_at = lay.split.index("bits") if "bits" in lay.split else None
        self.tables: dict[tuple, list[tuple[_Entry, Any]]] = {}  # key -> (entry, its set value)
        self.footnotes: dict[str, int] = {}
        self.shown_refs: set[int] = set()

    def split_key(self, e: _Entry) -> tuple:
        return tuple(e.fields.get(f) for f in self.lay.split)

    def split_match(self, ek: tuple, tk: tuple) -> bool:
        """Table membership; full-precision numbers belong to every bit-width's table."""
        return all((i == self.bits_at and a == "fp") or _matches(a, b) for i, (a, b) in enumerate(zip(ek, tk, strict=True)))

    def place_runs(self, entries: list[_Entry]) -> None:
        # measured numbers before failures (these fill measured columns), quantized before fp (fp joins)
        entries = sorted(entries, key=lambda e: (e.fp and self.bits_at is not None, e.state != "value"))
        for e in entries:
            k = self.split_key(e)
            if e.state == "value" and not (e.fp and self.bits_at is not None):
                self.tables.setdefault(k, [])
            elif not any(self.split_match(k, t) for t in self.tables):
                self.tables.setdefault(tuple(_concrete(v) for v in k), [])
        for e in sorted(entries, key=lambda e: e.state != "value"):
            for t in [t for t in self.tables if self.split_match(self.split_key(e), t)]:
                self.tables[t] += [(e, s) for s in self.set_values(e, t)]

    def present_sets(self, t: tuple) -> list[SetKey]:
        return list(dict.fromkeys(e.fields["set"] for e, _ in self.tables[t] if e.run and e.state == "value"))

    def set_values(self, e: _Entry, t: tuple) -> list[Any]:
        s = e.fields["set"]
        if "set" in self.lay.split:
            return [t[self.lay.split.index("set")]]
        if e.state == "value":
            return [s]
        return [p for p in self.present_sets(t) if _matches(s, p)] or [_concrete(s)]

    def place_refs(self, entries: list[_Entry]) -> None:
        """A published number goes to the column of its set whose protocol is closest to its own."""
        for e in entries:
            options = []  # (group, table, set value, differences)
            for t in self.tables:
                if not self.split_match(self.split_key(e), t) or not self.agrees(e, t):
                    continue
                if "set" in self.lay.split:
                    cands = [t[self.lay.split.index("set")]]
                    cands = [c for c in cands if _matches(e.fields["set"], c)]
                    group = tuple(v for f, v in zip(self.lay.split, t, strict=True) if f != "set")
                else:
                    cands, group = [p for p in self.present_sets(t) if _matches(e.fields["set"], p)], t
                options += [(group, t, c, reference_differences(e.proto, self.columns.get(c, {})))
                            for c in cands]
            best: dict[tuple, tuple] = {}
            for opt in options:
                if opt[0] not in best or len(opt[3]) < len(best[opt[0]][3]):
                    best[opt[0]] = opt
            for _, t, c, diffs in best.values():
                self.tables[t].append((e, (c, diffs)))

    def agrees(self, e: _Entry, t: tuple) -> bool:
        """A reference's stated fields outside the pivot must be those of some run in the table."""
        num = e.number
        placed = set(self.lay.rows + self.lay.cols + self.lay.split)
        runs = [x.run for x, _ in self.tables[t] if x.run]
        for f in IDENTITY:
            if f in num and f not in placed:
                want = method_label(num) if f == "method" else str(num[f])
                if not any(r.field(f) == want for r in runs):
                    return False
        return True

    def footnote(self, text: str) -> int:
        return self.footnotes.setdefault(text, len(self.footnotes) + 1)

    def build(self, t: tuple) -> Table:
        lay = self.lay
        placed = self.tables[t]
        datasets = {e.run.result.get("dataset") for e, _ in placed if e.run}
        in_dist = datasets.pop() if len(datasets) == 1 else None
        rank = {s: i for i, s in enumerate(self.columns)}  # sets and their protocols in run order

        def show_value(v: Any) -> str:
            if isinstance(v, SetKey):
                name = v.name.split(" ")[0]  # "<set> <metric>" where a column names its metric
                mark = "" if in_dist is None else " (ID)" if name == in_dist else " (OOD)"
                return f"{v.name}{mark}" + (f" [{v.label}]" if v.label else "")
            return "" if v is None else str(v)

        def col_key(e: _Entry, s: Any) -> tuple:
            return tuple(s if f == "set" else e.fields.get(f) for f in lay.cols)

        def row_key(e: _Entry, s: Any) -> tuple:
            own = tuple(s if f == "set" else e.fields.get(f) for f in lay.rows)
            split = tuple(tv if f == "set" or e.fields.get(f) is None else e.fields[f]
                          for f, tv in zip(lay.split, t, strict=True))
            return own + split, e.ref.title if e.ref else None

        cols: dict[tuple, int] = {}
        cells: dict[tuple, dict[tuple, Cell]] = {}
        first: dict[tuple, float] = {}
        fp_row: dict[tuple, bool] = {}
        marks_used: list[int] = []
        for e, s in placed:
            if e.ref:
                s, diffs = s
                targets = [c for c in cols if all(_matches(a, b) for a, b in zip(col_key(e, s), c, strict=True))]
                if not targets:
                    continue
                self.shown_refs.add(id(e))
            else:
                diffs, targets = [], [col_key(e, s)]
                cols.setdefault(targets[0], len(cols))
            rk = row_key(e, s)
            first[rk] = min(first.get(rk, e.order), e.order)
            fp_row[rk] = fp_row.get(rk, True) and e.fp
            for ck in targets:
                cell = cells.setdefault(rk, {}).setdefault(ck, Cell())
                if e.state == "value":
                    cell.values.append(e.value)
                else:
                    setattr(cell, e.state, getattr(cell, e.state) + 1)
                if e.run:
                    cell.runs.append(e.run)
                if diffs:
                    n = self.footnote(f"{e.ref.title}: protocol differs from ours: {'; '.join(diffs)}")
                    cell.marks = sorted(set(cell.marks) | {n})
                    marks_used.append(n)

        def col_order(ck: tuple) -> tuple:
            if "set" not in lay.cols:
                return (cols[ck],)
            s = ck[lay.cols.index("set")]
            return (s.name != in_dist, rank.get(s, len(rank)), cols[ck])

        col_keys = sorted(cols, key=col_order)

        seen: dict[tuple[int, Any], float] = {}  # (position, value) -> first run showing it
        for rk in cells:
            for i, v in enumerate(rk[0]):
                seen[(i, v)] = min(seen.get((i, v), first[rk]), first[rk])

        def row_order(rk: tuple) -> tuple:
            """fp first, then grouped field by field in the order runs show the values (sets: in run order)."""
            by_field = [rank.get(v, len(rank)) if f == "set" else seen[(i, v)]
                        for i, (f, v) in enumerate(zip([*lay.rows, *lay.split], rk[0], strict=True))]
            return (False if "set" in lay.rows else not fp_row[rk]), by_field

        run_rows = sorted((rk for rk in cells if rk[1] is None), key=row_order)
        ordered = []
        for rk in run_rows:
            ordered.append(rk)
            ordered += sorted((r for r in cells if r[1] is not None and r[0] == rk[0]), key=first.get)
        ordered += sorted((r for r in cells if r not in ordered), key=first.get)

        rows = []
        for vals, title in ordered:
            header = [show_value(v) for v in vals]
            if title:
                header[0] = f"{header[0]} (ref: {title})".lstrip()
            rows.append(Row(header, [cells[(vals, title)].get(ck, Cell()) for ck in col_keys], title))
        table = Table(split=[(f, show_value(v)) for f, v in zip(lay.split, t, strict=True)],
                      header=[*lay.rows, *lay.split],
                      columns=[" / ".join(show_value(v) for v in ck) for ck in col_keys], rows=rows)
        table.notes += _aggregate_note(table)
        by_number = {n: text for text, n in self.footnotes.items()}
        table.notes += [f"[{n}] {by_number[n]}" for n in sorted(set(marks_used))]
        return table


def _aggregate_note(table: Table) -> list[str]:
    """Say what the runs averaged in one cell differ in (seeds, or anything else)."""
    multi = [c for r in table.rows for c in r.cells if len(c.values) > 1 and len(c.runs) > 1]
    if not multi:
        return []
    differ: list[str] = []
    for c in multi:
        runs = c.runs
        if runs and all(r.config for r in runs):
            flats = [flat_config(r.config) for r in runs]
        else:
            flats = [{f: r.field(f) for f in IDENTITY} for r in runs]
        keys = sorted({k for f in flats for k in f})
        differ += [k for k in keys if len({f.get(k) for f in flats}) > 1 and k not in differ]
    what = f"they differ in: {', '.join(differ)}" if differ else "their configs are identical (repeats)"
    return [f"(n=k): the mean ± standard deviation of k numbers in one cell; {what}"]


def _separate_what_differs(lay: Layout, runs: list[Run]) -> Layout:
    """Default rows gain ``model``/``dataset``/``quantizer`` where runs sharing a row differ in it.

    A mean over seeds is a summary; a mean over a model with and without outlier channels, or over
    two range parameterizations, is not: those get rows of their own.
    """
    if lay.rows != DEFAULT_ROWS:
        return lay
    keys = [f for f in lay.rows + lay.split if f != "set"]
    extra = []
    for f in ("model", "dataset", "quantizer"):
        if f in lay.cols + lay.split:
            continue
        seen: dict[tuple, set] = {}
        for run in runs:
            if not run.problem:
                seen.setdefault(tuple(run.field(k) for k in keys), set()).add(run.field(f))
        if any(len(v) > 1 for v in seen.values()):
            extra.append(f)
    return Layout(lay.rows + tuple(extra), lay.cols, lay.split) if extra else lay


TASK_METRICS = {"lm": ("ppl",)}  # a task's metrics when its runs do not list them (LM: perplexity)
DIRECTION = {"lm": "lower is better", "glue": "higher is better"}


def _task(run: Run) -> str:
    return str(run.result.get("task") or (run.config or {}).get("task", {}).get("name") or "lm")


def _metrics_of(runs: list[Run]) -> list[str]:
    """The metrics the runs report, in their protocol's order (GLUE: primary first)."""
    found: dict[str, None] = {}
    for run in runs:
        for proto in (run.result.get("protocol") or {}).values():
            found |= dict.fromkeys(proto.get("metrics") or ())
        primary = run.result.get("primary_metric")
        if primary and not found:
            found[primary] = None
    return list(found) or list(TASK_METRICS.get(_task(runs[0]), ("ppl",)))


def build_report(loaded: Loaded, references: list[Reference] | None = None,
                 lay: Layout | None = None, metric: str = "auto") -> Report:
    """The comparison tables of ``loaded`` runs, published numbers beside them, and notes on both.

    ``metric="auto"``: each task's own metrics, in tables of their own (LM perplexity; GLUE a
    column per set and metric); a metric name shows that metric of every run.
    """
    if metric != "auto":
        return _build(loaded.runs, loaded, references or [], lay, [metric])
    by_task: dict[str, list[Run]] = {}
    for run in loaded.runs:
        by_task.setdefault("lm" if run.problem else _task(run), []).append(run)
    if list(by_task) in ([], ["lm"]):
        return _build(loaded.runs, loaded, references or [], lay, ["ppl"])
    tables, notes = [], []
    for task, runs in by_task.items():
        part = _build(runs, Loaded(runs, loaded.without_results if not tables else []),
                      (references or []) if task == "lm" else [], lay, _metrics_of(runs))
        for table in part.tables:
            table.split.insert(0, ("task", f"{task} ({DIRECTION.get(task, '')})"))
        tables += part.tables
        notes += part.notes
    return Report(tables, notes)


def _build(runs: list[Run], loaded: Loaded, references: list[Reference], lay: Layout | None,
           metrics: list[str]) -> Report:
    lay = _separate_what_differs(lay or make_layout(), runs)
    named = len(metrics) > 1
    tagged = [(i, e) for i, m in enumerate(metrics) for e in _run_entries(runs, lay, m, named)]

    def base(e: _Entry) -> str:  # "<set> <metric>" -> the set
        return e.fields["set"].name.split(" ")[0] if e.fields.get("set") else ""

    set_rank = {}
    for _, e in tagged:
        set_rank.setdefault(base(e), len(set_rank))
    entries = [e for _, e in sorted(tagged, key=lambda ie: (set_rank[base(ie[1])], ie[0]))]  # a set's metrics together
    columns, notes = _label_protocols(entries)
    builder = _Builder(lay, columns)
    builder.place_runs(entries)
    refs = [e for m in metrics for e in _ref_entries(references, lay, m)]
    builder.place_refs(refs)
    keys = list(builder.tables)
    if "set" in lay.split:  # tables of sets in the order runs list them, protocols together
        rank = {s: i for i, s in enumerate(columns)}
        keys.sort(key=lambda t: rank.get(t[lay.split.index("set")], len(rank)))
    tables = [builder.build(t) for t in keys]
    notes += _status_notes(loaded)
    for ref in references:
        proto = ", ".join(f"{k} {v}" for k, v in ref.protocol.items())
        notes.append(f"ref: {ref.title}" + (f" <{ref.source}>" if ref.source else "")
                     + (f"; their protocol: {proto}" if proto else ""))
        missed = [e for e in refs if e.ref is ref and id(e) not in builder.shown_refs]
        if missed:
            notes.append(f"ref: {ref.title}: {len(missed)} of {len(ref.numbers)} numbers match no table "
                         f"(model, bits, set or other fields none of our runs has)")
    models = {r.result.get("model"): r.result["outlier_profile"] for r in runs
              if isinstance(r.result.get("outlier_profile"), dict)}
    notes += [f"{m}: CONTROLLED setting, {p.get('channels')} emulated outlier channels x{p.get('factor')}"
              for m, p in models.items()]
    return Report(tables, notes)


def _status_notes(loaded: Loaded) -> list[str]:
    notes = []
    for r in loaded.runs:
        if r.problem:
            notes.append(f"unreadable: {r.dir / 'results.json'}: {r.problem}")
        elif r.status == "failed":
            notes.append(f"failed: {r.name}: {r.error or 'no error recorded'}")
        elif r.status == "interrupted":
            notes.append(f"incomplete: {r.name}: status interrupted (stopped by a signal; the same command "
                         "resumes it)")
        elif r.status in INCOMPLETE:
            notes.append(f"incomplete: {r.name}: status {r.status} (killed, or still running)")
        elif r.status != "completed":
            notes.append(f"incomplete: {r.name}: unknown status {r.status!r}")
    notes += [f"no results.json: {d} (the job's run never started)" for d in loaded.without_results]
    return notes


def fmt_number(v: float, precision: int) -> str:
    return "nan" if math.isnan(v) else f"{v:.{precision}f}"
