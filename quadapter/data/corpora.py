"""Text of a dataset split, from the embedded corpora, a local mirror, or the Hugging Face hub.

A dataset config (``conf/dataset/*.yaml``) names where its text lives; every source yields the same
rows for the same split (local mirrors are normalized to the hub's row convention), and the rows are
joined with the config's ``joiner`` into one string: the text that perplexity is measured on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from quadapter.data.embedded import embedded_documents
from quadapter.errors import UserError

LOCAL_FORMATS = ("wikitext", "lines", "jsonl")
SOURCES = ("auto", "embedded", "local", "hub")


class DataError(UserError):
    """A dataset or split that cannot be loaded, with a message that says how to fix it."""


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


def load_rows(spec: Mapping[str, Any], split: str, data_dir: str | None = None) -> list[str]:
    """Rows (lines or documents) of one split of the dataset described by ``spec``."""
    source = resolve_source(spec, data_dir)
    if source == "embedded":
        return embedded_documents(spec["embedded"]["domain"], split)
    if source == "local":
        return _local_rows(spec, split, data_dir)
    return _hub_rows(spec, split)


def load_text(spec: Mapping[str, Any], split: str, data_dir: str | None = None) -> str:
    """The split's rows joined into the one string that is tokenized and scored."""
    text = spec["joiner"].join(load_rows(spec, split, data_dir))
    if not text.strip():
        raise DataError(f"dataset {spec['name']!r}, split {split!r} is empty")
    return text


def _local_rows(spec: Mapping[str, Any], split: str, data_dir: str | None) -> list[str]:
    local = spec.get("local")
    if not local:
        raise DataError(f"dataset {spec['name']!r} has no local layout; use dataset.source=hub")
    if not data_dir:
        raise DataError(f"dataset {spec['name']!r}: source=local needs a data dir; set "
                        "QUADAPTER_DATA_DIR or paths.data_dir to a folder laid out like shared/data")
    files = local["files"]
    if split not in files:
        raise DataError(f"dataset {spec['name']!r} has no {split!r} split; it has {', '.join(files)}")
    path = Path(data_dir).expanduser() / local["dir"] / files[split]
    if not path.is_file():
        raise DataError(
            f"dataset {spec['name']!r}, split {split!r}: missing file {path}. The local mirror in "
            f"{data_dir} lacks this split; point QUADAPTER_DATA_DIR at a copy that has it, or use "
            "dataset.source=hub where the hub is reachable")
    fmt = local.get("format", "lines")
    if fmt not in LOCAL_FORMATS:
        raise DataError(f"dataset {spec['name']!r}: local.format={fmt!r} is not one of {LOCAL_FORMATS}")
    with open(path, encoding="utf-8") as f:
        if fmt == "jsonl":
            field = local.get("text_field", "text")
            return [json.loads(line)[field] for line in f if line.strip()]
        lines = f.readlines()
    if fmt == "wikitext":
        # The hub's wikitext rows keep each line's newline and store blank lines as "".
        return ["" if line == " \n" else line for line in lines]
    return [line.strip() for line in lines if line.strip()]


def _hub_rows(spec: Mapping[str, Any], split: str) -> list[str]:
    import datasets

    hub = spec.get("hub")
    if not hub:
        raise DataError(f"dataset {spec['name']!r} has no hub location; use dataset.source=local")
    try:
        ds = datasets.load_dataset(hub["path"], hub.get("name"), split=split,
                                   revision=hub.get("revision"))
    except Exception as e:  # network errors, missing splits, offline mode
        hint = ("" if os.environ.get("QUADAPTER_DATA_DIR") else
                " Offline? Set QUADAPTER_DATA_DIR to a local mirror laid out like shared/data.")
        raise DataError(f"dataset {spec['name']!r}: could not load {hub['path']}"
                        f"/{hub.get('name')} split {split!r} from the hub: {e}.{hint}") from e
    return list(ds[hub.get("text_field", "text")])
