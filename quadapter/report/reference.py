"""Published numbers to show beside ours (``--reference FILE.yaml``).

The file format (other tools write it, keep it stable)::

    title: GPT-2 zero-shot perplexity (Radford et al. 2019, Table 3)   # shown as the source
    source: https://...                                                # where the numbers are from
    protocol: {context: 1024, stride: 1024, level: word}               # how they measured; any keys
    numbers:                                                           # one entry per number
      - {method: fp, bits: fp, model: gpt2, set: wikitext2, ppl: 29.41}
      - {method: fp, bits: fp, model: gpt2-medium, set: ptb, ppl: 47.33, protocol: {stride: 512}}

An entry's ``protocol`` overrides the file-level keys. Its other keys (method, bits, model, ...)
place it in the pivot like the fields of a run; keys it leaves out match anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quadapter.errors import UserError


class ReferenceFileError(UserError):
    """A reference file that cannot be used: names the file, the entry and what is wrong."""


@dataclass
class Reference:
    title: str
    source: str | None
    protocol: dict[str, Any]
    numbers: list[dict[str, Any]]  # each with its merged protocol under "protocol"
    path: Path


def load_reference(path: Path) -> Reference:
    """Read and check one reference file."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ReferenceFileError(f"reference file {path}: cannot read it ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("numbers"), list) or not doc["numbers"]:
        raise ReferenceFileError(f"reference file {path}: needs a mapping with a non-empty list "
                             "'numbers' (entries like {method: fp, bits: fp, model: gpt2, set: wikitext2, "
                             "ppl: 29.41})")
    protocol = doc.get("protocol") or {}
    if not isinstance(protocol, dict):
        raise ReferenceFileError(f"reference file {path}: 'protocol' must be a mapping, got {protocol!r}")
    numbers = []
    for i, entry in enumerate(doc["numbers"]):
        where = f"reference file {path}, numbers[{i}]"
        if not isinstance(entry, dict):
            raise ReferenceFileError(f"{where}: must be a mapping, got {entry!r}")
        if not isinstance(entry.get("set"), str):
            raise ReferenceFileError(f"{where}: needs 'set' (the held-out set, e.g. wikitext2)")
        ppl = entry.get("ppl")
        if isinstance(ppl, bool) or not isinstance(ppl, (int, float)):
            raise ReferenceFileError(f"{where}: 'ppl' must be a number, got {ppl!r}")
        own = entry.get("protocol") or {}
        if not isinstance(own, dict):
            raise ReferenceFileError(f"{where}: 'protocol' must be a mapping, got {own!r}")
        numbers.append(entry | {"protocol": protocol | own})
    return Reference(title=str(doc.get("title") or Path(path).stem), source=doc.get("source"),
                     protocol=protocol, numbers=numbers, path=Path(path))
