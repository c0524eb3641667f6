"""Text of a dataset split, from the embedded corpora, a local mirror, or the Hugging Face hub.

A dataset config (``conf/dataset/*.yaml``) names where its text lives; every source yields the same
rows for the same split (local mirrors are normalized to the hub's row convention), and the rows are
joined with the config's ``joiner`` into one string: the text that perplexity is measured on.
Every way a split can be missing, unreadable or empty is a ``DataError`` naming the dataset, the
split, the file or hub location, and the fix.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping

from quadapter.data.embedded import DOMAINS, SPLITS, embedded_documents
from quadapter.errors import UserError

LOCAL_FORMATS = ("wikitext", "lines", "jsonl")
SOURCES = ("auto", "embedded", "local", "hub")
DATA_DIR_KEYS = "paths.data_dir, by default $QUADAPTER_DATA_DIR"


class DataError(UserError):
    """A dataset or split that cannot be loaded, with a message that says how to fix it."""


class MissingSplitError(DataError):
    """The split does not exist in its source (a config without it, or a local file that is absent).

    The one data error a caller may recover from by choosing another split (the training curves
    fall back to the test split); every other ``DataError`` is a broken input and must surface.
    """


def resolve_source(spec: Mapping[str, Any], data_dir: str | None) -> str:
    """`auto` picks the local mirror when a data dir is configured, else the hub."""
    source = spec.get("source", "auto")
    if source not in SOURCES:
        raise DataError(f"dataset {spec['name']!r}: source={source!r} is not one of {', '.join(SOURCES)}")
    if source == "auto":
        if spec.get("embedded"):
            return "embedded"
        return "local" if data_dir and spec.get("local") else "hub"
    return source


def describe_source(spec: Mapping[str, Any], split: str, data_dir: str | None = None) -> str:
    """Where a split's text comes from, for messages: the embedded domain, the file or the hub id."""
    source = resolve_source(spec, data_dir)
    if source == "embedded" and spec.get("embedded"):
        return f"the embedded {spec['embedded']['domain']} corpus"
    if source == "local" and spec.get("local") and data_dir and split in spec["local"]["files"]:
        return f"file {_local_path(spec, split, data_dir)}"
    if source == "hub" and spec.get("hub"):
        return f"hub dataset {spec['hub']['path']}/{spec['hub'].get('name')}"
    return f"source {source}"


def load_rows(spec: Mapping[str, Any], split: str, data_dir: str | None = None) -> list[str]:
    """Rows (lines or documents) of one split of the dataset described by ``spec``."""
    source = resolve_source(spec, data_dir)
    if source == "embedded":
        return _embedded_rows(spec, split)
    if source == "local":
        return _local_rows(spec, split, data_dir)
    return _hub_rows(spec, split)


def load_text(spec: Mapping[str, Any], split: str, data_dir: str | None = None) -> str:
    """The split's rows joined into the one string that is tokenized and scored."""
    rows = load_rows(spec, split, data_dir)
    text = spec["joiner"].join(rows)
    if not text.strip():
        what = "no rows" if not rows else f"{len(rows)} rows, all blank"
        raise DataError(
            f"dataset {spec['name']!r}, split {split!r} is empty ({what} in "
            f"{describe_source(spec, split, data_dir)}): there is nothing to score or train on. "
            "Check that the file holds the split's text, or choose another split or dataset")
    return text


def _embedded_rows(spec: Mapping[str, Any], split: str) -> list[str]:
    embedded = spec.get("embedded")
    if not embedded:
        raise DataError(f"dataset {spec['name']!r} is not an embedded corpus (embedded: null); "
                        "use dataset.source=local or dataset.source=hub")
    if embedded["domain"] not in DOMAINS:
        raise DataError(f"dataset {spec['name']!r}: embedded.domain={embedded['domain']!r} is not one "
                        f"of {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise MissingSplitError(
            f"dataset {spec['name']!r} (embedded) has no {split!r} split; it has "
            f"{', '.join(SPLITS)}. Set eval.split / eval.val_split / quantizer.calibration.split to one "
            "of them")
    return embedded_documents(embedded["domain"], split)


def _local_path(spec: Mapping[str, Any], split: str, data_dir: str) -> Path:
    return Path(data_dir).expanduser() / spec["local"]["dir"] / spec["local"]["files"][split]


def _local_rows(spec: Mapping[str, Any], split: str, data_dir: str | None) -> list[str]:
    name, local = spec["name"], spec.get("local")
    if not local:
        raise DataError(f"dataset {name!r} has no local layout; use dataset.source=hub")
    if not data_dir:
        raise DataError(f"dataset {name!r}: source=local needs a data dir; set "
                        "QUADAPTER_DATA_DIR or paths.data_dir to a folder laid out like shared/data "
                        "(README, Data)")
    files = local["files"]
    if split not in files:
        raise MissingSplitError(f"dataset {name!r} has no {split!r} split; it has {', '.join(files)}")
    root = Path(data_dir).expanduser()
    path = _local_path(spec, split, data_dir)
    if not root.is_dir():
        raise DataError(
            f"dataset {name!r}, split {split!r}: the data dir {root} ({DATA_DIR_KEYS}) "
            f"{'is a file, not a folder' if root.exists() else 'does not exist'}; it should hold {local['dir']}/{files[split]}. Point QUADAPTER_DATA_DIR or "
            "paths.data_dir at the local mirror (README, Data), or unset both to use the hub")
    if not path.is_file():
        found = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else None
        where = (f"{path.parent} holds {', '.join(found) or 'nothing'}" if found is not None
                 else f"there is no folder {path.parent}")
        raise MissingSplitError(
            f"dataset {name!r}, split {split!r}: missing file {path} ({where}). The local mirror "
            f"in {data_dir} ({DATA_DIR_KEYS}) lacks this split; add the file, point "
            "QUADAPTER_DATA_DIR at a copy that has it, or use dataset.source=hub where the hub is "
            "reachable")
    fmt = local.get("format", "lines")
    if fmt not in LOCAL_FORMATS:
        raise DataError(f"dataset {name!r}: local.format={fmt!r} is not one of {LOCAL_FORMATS}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"dataset {name!r}, split {split!r}: cannot read {path}: {e}") from e
    try:  # decoded whole, so the error's offset is the file's own; newlines as open() reads them
        lines = io.StringIO(raw.decode("utf-8"), newline=None).readlines()
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"dataset {name!r}, split {split!r}: {path} is not UTF-8 text (byte "
                        f"{e.start}, line {line}: {e.reason}); "
                        "re-encode it as UTF-8") from e
    if fmt == "jsonl":
        return _jsonl_rows(lines, local.get("text_field", "text"), path, name, split)
    if fmt == "wikitext":
        # The hub's wikitext rows keep each line's newline and store blank lines as "".
        return ["" if line == " \n" else line for line in lines]
    return [line.strip() for line in lines if line.strip()]


def _jsonl_rows(lines: list[str], field: str, path: Path, name: str, split: str) -> list[str]:
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"dataset {name!r}, split {split!r}: {path} line {number} is not JSON "
                            f"({e.msg}); every line must be one JSON object") from e
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"dataset {name!r}, split {split!r}: {path} line {number} has no text "
                            f"field {field!r}; set dataset.local.text_field to the field holding the text")
        rows.append(record[field])
    return rows


def _hub_rows(spec: Mapping[str, Any], split: str) -> list[str]:
    import datasets

    hub = spec.get("hub")
    if not hub:
        raise DataError(f"dataset {spec['name']!r} has no hub location; use dataset.source=local")
    try:
        ds = datasets.load_dataset(hub["path"], hub.get("name"), split=split,
                                   revision=hub.get("revision"))
    except Exception as e:  # network errors, missing splits, offline mode
        if isinstance(e, ValueError) and "Unknown split" in str(e):
            raise MissingSplitError(f"dataset {spec['name']!r}: hub dataset {hub['path']}/"
                                    f"{hub.get('name')} has no {split!r} split ({e})") from e
        hint = ("" if os.environ.get("QUADAPTER_DATA_DIR") else
                " Offline? Set QUADAPTER_DATA_DIR to a local mirror laid out like shared/data.")
        raise DataError(f"dataset {spec['name']!r}: could not load {hub['path']}"
                        f"/{hub.get('name')} split {split!r} from the hub: {e}.{hint}") from e
    field = hub.get("text_field", "text")
    if field not in ds.column_names:
        raise DataError(f"dataset {spec['name']!r}: hub dataset {hub['path']} has no column {field!r} "
                        f"(it has {', '.join(ds.column_names)}); set dataset.hub.text_field")
    return list(ds[field])
