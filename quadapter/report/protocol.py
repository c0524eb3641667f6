"""The protocol guard: perplexities measured differently never share a column silently.

Two numbers of one held-out set share a column only if their protocols agree on every key of
``GUARD``: the text (variant, split, joiner), the windows (context, stride), the unit (level:
token or word), the tokenization and how many tokens were evaluated and scored. Otherwise the set
gets one column per protocol, labelled by the fewest differing keys that tell them apart
(``prose [stride 32]``), and a note names every key that differs.

The tokenizer is compared by the number of tokens it makes of the whole split (``tokens_in_split``)
where that is recorded: GPT-2's sizes load their tokenizers from different names but share one BPE,
while two different tokenizers practically never give the same count. Without counts (reference
numbers) tokenizers are compared by name (the last path component).

A published number goes to the column of its set whose protocol differs from its own in the fewest
keys the reference states; every stated key that still differs is footnoted on the number. Keys a
reference does not state are not compared.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

GUARD = ("variant", "split", "level", "context", "stride", "tokens", "joiner", "tokenizer",
         "scored_tokens")  # also the order in which keys are tried for column labels
_SHORT = {"context": "ctx", "scored_tokens": "scored"}


def _tokenizer_name(value: Any) -> str:
    return PurePath(str(value)).name or str(value)


def _value(proto: dict[str, Any], key: str) -> Any:
    if key == "tokenizer":
        count = proto.get("tokens_in_split")
        return ("tokens in split", count) if count is not None else _tokenizer_name(proto.get(key))
    return proto.get(key)


def signature(proto: dict[str, Any]) -> tuple:
    """What must be equal for two numbers of a set to share a column."""
    return tuple(_value(proto, k) for k in GUARD)


def show(key: str, value: Any) -> str:
    """``stride 512``, ``ctx 1024``, ``joiner '\\n\\n'``: one protocol key for a label or note."""
    if key == "tokenizer":
        value = _tokenizer_name(value)
    elif key == "joiner":
        value = repr(value)
    return f"{_SHORT.get(key, key)} {value}"


def differing_keys(protos: list[dict[str, Any]]) -> list[str]:
    """The GUARD keys on which these protocols disagree."""
    keys = [k for k in GUARD if k != "tokenizer" and len({repr(p.get(k)) for p in protos}) > 1]
    by_text: dict[tuple, set] = {}  # tokenization differs only where the same text counts differently
    for p in protos:
        by_text.setdefault((p.get("variant"), p.get("split"), p.get("joiner")), set()).add(
            repr(_value(p, "tokenizer")))
    if any(len(v) > 1 for v in by_text.values()):
        keys.insert(GUARD.index("tokenizer"), "tokenizer")
    return keys


def labels(protos: list[dict[str, Any]]) -> list[str]:
    """Column labels for the distinct protocols of one set: the fewest differing keys that tell them apart."""
    if len(protos) < 2:
        return [""] * len(protos)
    chosen: list[str] = []
    out = [""] * len(protos)
    for key in differing_keys(protos):
        chosen.append(key)
        out = [", ".join(show(k, p.get(k)) for k in chosen) for p in protos]
        if len(set(out)) == len(out):
            return out
    return [f"{lab}, protocol {i + 1}".lstrip(", ") for i, lab in enumerate(out)]


def reference_differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """``level word (ours token)`` for each GUARD key the reference states and we measured differently."""
    out = []
    for key in GUARD:
        if key not in theirs:
            continue
        if key == "tokenizer":
            same = _tokenizer_name(theirs[key]) == _tokenizer_name(ours.get(key))
        else:
            same = str(theirs[key]) == str(ours.get(key))
        if not same:
            ours_text = show(key, ours.get(key)).split(" ", 1)[1]
            out.append(f"{show(key, theirs[key])} (ours {ours_text})")
    return out
