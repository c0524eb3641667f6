"""GLUE tasks as GLUE's ``download_glue_data.py`` writes them: one ``<Task>/<split>.tsv`` per split.

Each task declares its file layout (header, the text and label columns), its label set and its
metrics, so reading checks every file against the declaration and a wrong file fails with one line
naming the file, the line and the fix, before any model is loaded. Files are read as the Hugging Face
``glue`` builder reads them (tab-separated, no quoting: a ``"`` is text), so our rows equal theirs.
GLUE's test labels are hidden: ``train`` and ``dev`` are the labelled splits.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from quadapter.data.corpora import DataError, MissingSplitError, resolve_source
from quadapter.errors import ConfigError

SPLITS = ("train", "dev")


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task's files and labels.

    ``header``: the exact header row, or ``None`` for a file without one (CoLA), whose rows then
    have ``columns`` fields. ``text``/``label``: the column names (or, without a header, indices)
    of the one or two texts and of the label. ``labels``: the label strings in class order (class
    i is ``labels[i]``); empty for a regression task (STS-B: a float score in ``score_range``).
    """

    name: str  # our name: dataset=glue_<name>
    folder: str  # GLUE's folder name
    header: tuple[str, ...] | None
    text: tuple[str | int, ...]
    label: str | int
    labels: tuple[str, ...] = ()
    score_range: tuple[float, float] | None = None
    metrics: tuple[str, ...] = ("accuracy",)
    columns: int | None = None
    hub_text: tuple[str, ...] = ("sentence1", "sentence2")  # the text columns of hub nyu-mll/glue

    @property
    def num_labels(self) -> int:
        """Output units of the classifier head: 1 for regression."""
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels


TASKS = {t.name: t for t in (
    GlueTask("cola", "CoLA", None, (3,), 1, ("0", "1"), metrics=("mcc", "accuracy"), columns=4,
             hub_text=("sentence",)),
    GlueTask("sst2", "SST-2", ("sentence", "label"), ("sentence",), "label", ("0", "1"),
             hub_text=("sentence",)),
    GlueTask("mrpc", "MRPC", ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
             ("#1 String", "#2 String"), "Quality", ("0", "1"), metrics=("accuracy", "f1")),
    GlueTask("stsb", "STS-B", ("index", "genre", "filename", "year", "old_index", "source1",
                               "source2", "sentence1", "sentence2", "score"),
             ("sentence1", "sentence2"), "score", score_range=(0.0, 5.0),
             metrics=("pearson", "spearman")),
    GlueTask("qnli", "QNLI", ("index", "question", "sentence", "label"), ("question", "sentence"),
             "label", ("entailment", "not_entailment"), hub_text=("question", "sentence")),
    GlueTask("rte", "RTE", ("index", "sentence1", "sentence2", "label"), ("sentence1", "sentence2"),
             "label", ("entailment", "not_entailment")),
)}


@dataclass(frozen=True)
class GlueSplit:
    """The rows of one split: one or two text columns and the labels (class ids, or scores)."""

    task: GlueTask
    split: str
    texts: tuple[tuple[str, ...], ...]  # per text column, one string per example
    labels: tuple[float, ...] | tuple[int, ...]
    path: Path

    def __len__(self) -> int:
        return len(self.labels)


def task(name: str) -> GlueTask:
    if name not in TASKS:
        raise ConfigError(f"unknown GLUE task {name!r}: expected one of {', '.join(TASKS)}")
    return TASKS[name]


def split_path(spec: GlueTask, data_dir: str | Path, split: str) -> Path:
    """``<data_dir>/glue/<Folder>/<split>.tsv`` (``data_dir`` may also be the glue folder itself)."""
    if split not in SPLITS:
        raise ConfigError(f"GLUE split {split!r} is invalid: expected one of {', '.join(SPLITS)} "
                          "(GLUE's test labels are hidden)")
    root = Path(data_dir).expanduser()
    if (root / "glue").is_dir():
        root = root / "glue"
    return root / spec.folder / f"{split}.tsv"


def read_split(spec: GlueTask, data_dir: str | Path, split: str) -> GlueSplit:
    """Read and check one split; a bad file is a ``DataError`` naming the file, the line and the fix."""
    path = split_path(spec, data_dir, split)
    if not path.is_file():
        raise MissingSplitError(f"GLUE {spec.name} {split} split not found at {path}: point paths.data_dir "
                          f"at a folder holding glue/{spec.folder}/{split}.tsv (GLUE's "
                          "download_glue_data.py layout), e.g. ../shared/data")
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.header is not None:
        if not rows or tuple(rows[0]) != spec.header:
            found = repr("\t".join(rows[0])) if rows else "empty"
            raise DataError(f"{path}: line 1 is {found}, not GLUE {spec.folder}'s header "
                              f"{chr(9).join(spec.header)!r}: is this the right task's file?")
        columns = {name: i for i, name in enumerate(spec.header)}
        first_line, body = 2, rows[1:]
    else:
        columns, first_line, body = {}, 1, rows
    text_cols = [columns.get(c, c) for c in spec.text]
    label_col = columns.get(spec.label, spec.label)
    width = spec.columns or len(spec.header or ())
    texts: list[list[str]] = [[] for _ in text_cols]
    labels: list = []
    for line, row in enumerate(body, first_line):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} tab-separated fields, GLUE "
                              f"{spec.folder} has {width}: the file is damaged or another task's")
        for out, col in zip(texts, text_cols):
            out.append(row[col])
        labels.append(_label(spec, row[label_col], path, line))
    if not labels:
        raise DataError(f"{path}: no examples; expected GLUE {spec.folder}'s {split} rows")
    return GlueSplit(spec, split, tuple(map(tuple, texts)), tuple(labels), path)


def _label(spec: GlueTask, value: str, path: Path, line: int) -> int | float:
    if spec.is_regression:
        lo, hi = spec.score_range
        try:
            score = float(value)
        except ValueError:
            score = float("nan")
        if not lo <= score <= hi:  # also false for NaN
            raise DataError(f"{path}: line {line} has score {value!r}; GLUE {spec.folder} scores "
                              f"are numbers in [{lo:g}, {hi:g}]")
        return score
    if value not in spec.labels:
        raise DataError(f"{path}: line {line} has label {value!r}; GLUE {spec.folder}'s labels are "
                          f"{', '.join(spec.labels)}")
    return spec.labels.index(value)


HUB_SPLITS = {"train": "train", "dev": "validation"}


def load_split(spec: Mapping[str, Any], split: str, data_dir: str | None) -> GlueSplit:
    """One split of a ``dataset=glue_*`` config: the local mirror (``<data_dir>/<local.dir>``) or the
    hub (``nyu-mll/glue``), as ``dataset.source`` says (``auto``: local when a data dir is set)."""
    glue = task(spec["task"])
    source = resolve_source(spec, data_dir)
    if source == "local":
        if not data_dir:
            raise ConfigError(f"dataset {spec['name']!r}: source=local needs paths.data_dir (or "
                              "QUADAPTER_DATA_DIR) pointing at a folder that holds glue/")
        return read_split(glue, Path(data_dir).expanduser() / spec["local"]["dir"], split)
    if source != "hub":
        raise ConfigError(f"dataset {spec['name']!r}: source={source!r}: GLUE comes from local or hub")
    return _hub_split(glue, spec, split)


def _hub_split(glue: GlueTask, spec: Mapping[str, Any], split: str) -> GlueSplit:
    import datasets

    hub = spec["hub"]
    if split not in HUB_SPLITS:
        split_path(glue, ".", split)  # the same ConfigError as for a local mirror
    try:
        ds = datasets.load_dataset(hub["path"], hub["name"], split=HUB_SPLITS[split],
                                   revision=hub.get("revision"))
    except Exception as e:  # network errors, offline mode
        raise DataError(f"dataset {spec['name']!r}: could not load {hub['path']}/{hub['name']} split "
                        f"{HUB_SPLITS[split]!r} from the hub: {e}. Offline? Set QUADAPTER_DATA_DIR "
                        "to a folder holding glue/<Task>/{train,dev}.tsv, e.g. ../shared/data") from e
    missing = [c for c in (*glue.hub_text, "label") if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {spec['name']!r}: hub dataset {hub['path']}/{hub['name']} lacks "
                        f"column(s) {', '.join(missing)} (it has {', '.join(ds.column_names)})")
    labels = [float(v) for v in ds["label"]] if glue.is_regression else [int(v) for v in ds["label"]]
    bad = [v for v in labels if not (glue.score_range[0] <= v <= glue.score_range[1]
                                      if glue.is_regression else 0 <= v < glue.num_labels)]
    if bad:
        raise DataError(f"dataset {spec['name']!r}: hub split {HUB_SPLITS[split]!r} has label {bad[0]!r} "
                        f"outside GLUE {glue.folder}'s set (test splits have hidden labels, -1)")
    return GlueSplit(glue, split, tuple(tuple(ds[c]) for c in glue.hub_text), tuple(labels),
                     Path(f"hub:{hub['path']}/{hub['name']}/{HUB_SPLITS[split]}"))
