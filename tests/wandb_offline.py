"""Read back what W&B wrote offline: the records of a ``run-*.wandb`` file.

The file is W&B's LevelDB-style log (32 KiB blocks of checksummed chunks, after a 7-byte ``:W&B``
header) of ``wandb_internal_pb2.Record`` protobufs. wandb no longer ships a Python reader, so the
tests carry this small one to check that logged metrics really reached the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B datastore file"
    out, pos, pending = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def history(path: str | Path) -> list[dict]:
    """Every ``log`` call's values, in order."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in rec.history.item})
    return rows


def config(path: str | Path) -> dict:
    """The run config as W&B stored it (last write wins)."""
    cfg = {}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            cfg.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            cfg.update({i.key: json.loads(i.value_json) for i in rec.config.update})
    return cfg
