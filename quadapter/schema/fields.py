"""Typed walking of a config: OmegaConf checks the types, field metadata the values.

A schema is a dataclass whose fields carry their allowed values (``knob``). ``typed`` walks a
plain mapping and assigns each leaf to a node made by ``OmegaConf.structured(schema)``, so
OmegaConf does the type checking and conversion; keys the schema lacks are refused, and every
failure becomes one line in ``Problems`` naming the key, the value as given and what is expected.
Nothing stops at the first problem.
"""

from __future__ import annotations

import difflib
import math
import functools
import types
import typing
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Mapping, Sequence, Union

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from quadapter.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """A value constraint OmegaConf's types cannot say: a predicate and its wording."""

    ok: Callable[[Any], bool]
    text: str  # "an integer >= 1": completes "expected ..."


def at_least(lo: int | float, what: str = "an integer") -> Check:
    return Check(lambda v: v >= lo, f"{what} >= {lo}")


def in_range(lo: int, hi: int) -> Check:
    return Check(lambda v: lo <= v <= hi, f"an integer in {lo}..{hi}")


POSITIVE_INT = at_least(1)
NON_NEGATIVE_INT = at_least(0)
POSITIVE = Check(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")  # inf and nan fail later
NON_NEGATIVE = Check(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
UNIT_INTERVAL = Check(lambda v: 0 <= v <= 1, "a number in [0, 1]")
SEED = in_range(0, 2**32 - 1)  # what numpy and Lightning's seed_everything accept
NON_EMPTY = Check(lambda v: bool(str(v).strip()), "a non-empty string")


def knob(default: Any = MISSING, *, factory: Callable[[], Any] | None = None,
         choices: Sequence[str] | None = None, check: Check | None = None, expect: str | None = None,
         hint: str | None = None, variants: Mapping[str, type] | None = None,
         tag: str | None = None, lenient_if: Callable[[Mapping], bool] | None = None) -> Any:
    """A schema field: ``default`` (MISSING = required) and what its value may be.

    ``choices``: allowed strings (for a list: of every element, which must be distinct and at
    least one); ``check``: a ``Check``; ``expect``: the wording of "expected ..." if not derived;
    ``hint``: a parenthesized remark after it (what the key means, an example); ``variants`` with
    ``tag``: the value's schema is chosen by its own key ``tag`` (``"name"``) or, with a leading
    ``^``, by a sibling key (``"^estimator"``); ``lenient_if(parent mapping)``: when true, keys
    missing below this field are not reported (the run does not read it).
    """
    meta = {k: v for k, v in dict(choices=choices, check=check, expect=expect, hint=hint,
                                  variants=variants, tag=tag, lenient_if=lenient_if).items()
            if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def show(value: Any) -> str:
    """A value as a user would write it in an override (strings quoted, so '8' is not 8)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


class Problems:
    """Lines of one ConfigError; ``bad`` holds the keys they name (relation checks skip those)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bad: set[str] = set()

    def add(self, keys: str | Sequence[str], line: str) -> None:
        self.bad.update([keys] if isinstance(keys, str) else keys)
        if line not in self.lines:
            self.lines.append(line)

    def invalid(self, key: str, value: Any, expected: str, hint: str | None = None,
                detail: str | None = None) -> None:
        extra = f"; {detail}" if detail else ""
        self.add(key, f"{key}={show(value)} is invalid: expected {expected}{extra}"
                      + (f" ({hint})" if hint else ""))

    def missing(self, key: str, expected: str, hint: str | None = None) -> None:
        self.add(key, f"{key} is missing: expected {expected}" + (f" ({hint})" if hint else ""))

    def unknown(self, key: str, known: Sequence[str]) -> None:
        parent, _, name = key.rpartition(".")
        close = difflib.get_close_matches(name, known, n=1)
        guess = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        has = f"has: {', '.join(known)}" if known else "has no keys"
        self.add(key, f"{key} is not a config key{guess}; {parent or 'the config'} {has}")

    def raise_if_any(self) -> None:
        if len(self.lines) == 1:
            raise ConfigError(f"config error: {self.lines[0]}")
        if self.lines:
            raise ConfigError(f"config error: {len(self.lines)} problems:\n"
                              + "\n".join(f"  - {line}" for line in self.lines))


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional, whether it was Optional)."""
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0], True
    return tp, False


def describe(tp: Any) -> str:
    """Words for a type annotation: what OmegaConf will accept there."""
    base, optional = _optional(tp)
    origin = typing.get_origin(base)
    if is_dataclass(base):
        names = [f.name for f in fields(base)]
        text = f"a mapping with keys {', '.join(names)}" if names else "an empty mapping {}"
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                list: "a list", dict: "a mapping"}.get(origin or base, "a value")
    return f"{text} or null" if optional else text


def expected(f: Any, tp: Any) -> str:
    """The "expected ..." text of a field: its ``expect``, else its choices or check, else its type."""
    meta = f.metadata
    if "expect" in meta:
        return meta["expect"]
    base, optional = _optional(tp)
    if "choices" in meta:
        values = ", ".join(meta["choices"])
        text = (f"a non-empty list of distinct values from {values}"
                if typing.get_origin(base) is list else f"one of {values}")
    elif "check" in meta:
        text = meta["check"].text
    else:
        return describe(tp)
    return f"{text} or null" if optional else text


def _coerced(tp: Any, raw: Any) -> bool:
    """True where OmegaConf converted a value the code would read raw: '8' to 8, 1 to true."""
    base, _ = _optional(tp)
    if raw is None:
        return False
    if base in (int, float, bool) and isinstance(raw, str):
        return True
    return base is bool and not isinstance(raw, bool)


def list_problem(items: Sequence[Any], choices: Sequence[Any]) -> str | None:
    """Why ``items`` is not a non-empty list of distinct ``choices``, or None if it is one."""
    items = list(items)
    unknown = [v for v in items if v not in choices]
    if unknown:
        return f"unknown: {', '.join(map(repr, unknown))}"
    if not items:
        return "the list is empty"
    if len(set(items)) != len(items):
        return "it repeats a value"
    return None


def _value_problem(meta: Mapping, tp: Any, value: Any) -> str | None:
    """Why a converted value breaks its choices or check ("" for no detail), or None if it is fine."""
    if value is None:
        return None
    base, _ = _optional(tp)
    choices = meta.get("choices")
    if choices is not None and typing.get_origin(base) is list:
        return list_problem(value, choices)
    elif choices is not None and value not in choices:
        return ""
    check = meta.get("check")
    if check is not None and not check.ok(value):
        return ""
    return None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


@functools.lru_cache(maxsize=None)
def _template(schema: type) -> DictConfig:
    """One structured node per schema, reused: leaf values are assigned to it only to be checked."""
    return OmegaConf.structured(schema)


def _default(f: Any) -> Any:
    if f.default_factory is not NO_DEFAULT:
        return f.default_factory()
    return f.default


def key_paths(schema: type, prefix: str = "") -> set[str]:
    """Every dotted key a schema defines, nested mappings included."""
    out = set()
    for f in fields(schema):
        out.add(_join(prefix, f.name))
        base, _ = _optional(typing.get_type_hints(schema)[f.name])
        if is_dataclass(base):
            out |= key_paths(base, _join(prefix, f.name))
    return out


@dataclass(frozen=True)
class Walk:
    """How a subtree is typed: ``lenient`` reports no missing keys (a group the run does not
    read); keys in ``tolerated`` (another variant's, added by ``++`` for a sweep over methods)
    are skipped, not refused."""

    problems: Problems
    lenient: bool = False
    tolerated: frozenset = frozenset()


def typed(schema: type, raw: Any, path: str, walk: Walk | Problems, hint: str | None = None
          ) -> dict[str, Any] | None:
    """``raw`` (a plain mapping) typed by ``schema``, as plain values with absent keys defaulted
    (``"???"`` where required); None if ``raw`` is not a mapping at all."""
    walk = walk if isinstance(walk, Walk) else Walk(walk)
    problems = walk.problems
    if not isinstance(raw, Mapping):
        problems.invalid(path, raw, describe(schema), hint)
        return None
    node = _template(schema)
    hints = typing.get_type_hints(schema)
    by_name = {f.name: f for f in fields(schema)}
    out = {name: _default(f) for name, f in by_name.items()}
    for key, value in raw.items():
        full = _join(path, key)
        f = by_name.get(key)
        if f is None:
            if full not in walk.tolerated:
                problems.unknown(full, list(by_name))
            continue
        tp, meta = hints[key], f.metadata
        if isinstance(value, str) and value == MISSING:
            out[key] = MISSING  # reported below
            continue
        sub = walk
        if "lenient_if" in meta and meta["lenient_if"](raw):
            sub = Walk(problems, True, walk.tolerated)
        nested, converted = _nested(f, tp, value, raw, full, sub)
        if nested:  # a mapping typed below (or None there): not assigned whole, only its leaves
            out[key] = converted
            continue
        try:
            node[key] = value
            converted = node[key]
        except OmegaConfBaseException:
            problems.invalid(full, value, expected(f, tp), meta.get("hint"))
            continue
        if OmegaConf.is_config(converted):
            converted = OmegaConf.to_container(converted)
        if _coerced(tp, value):
            problems.invalid(full, value, expected(f, tp), meta.get("hint"))
            continue
        out[key] = converted
        detail = _value_problem(meta, tp, converted)
        if detail is not None:
            problems.invalid(full, value, expected(f, tp), meta.get("hint"), detail or None)
    for key, f in by_name.items():
        full = _join(path, key)
        if out[key] == MISSING and full not in problems.bad and not walk.lenient:
            problems.missing(full, expected(f, hints[key]), f.metadata.get("hint"))
    return out


def _lookup(node: Any, dotted: str) -> Any:
    """``node[a][b]`` for ``"a.b"``; None where a step is not a mapping holding the key."""
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _nested(f: Any, tp: Any, value: Any, parent: Mapping, full: str, walk: Walk
            ) -> tuple[bool, Any]:
    """(True, typed value) for a field holding mappings typed here, recursively; (False, None)
    for a leaf (OmegaConf checks it). A bad mapping is typed as ``"???"``, already reported."""
    meta, problems = f.metadata, walk.problems
    base, optional = _optional(tp)
    if "variants" in meta:
        tag = meta["tag"]
        if value is None and tag.startswith("^"):
            return False, None  # e.g. estimator_kw: null, as {}
        if value is None:
            problems.invalid(full, value, f"a mapping with a {tag} key", meta.get("hint"))
            return True, MISSING
        chosen = _lookup(parent, tag[1:]) if tag.startswith("^") else (
            value.get(tag) if isinstance(value, Mapping) else None)
        schema = meta["variants"].get(chosen) if isinstance(chosen, str) else None
        if schema is None:  # a sibling tag reports its own bad value
            if not tag.startswith("^") and isinstance(value, Mapping):
                problems.invalid(_join(full, tag), chosen, f"one of {', '.join(meta['variants'])}",
                                 meta.get("hint"))
            elif not tag.startswith("^"):
                problems.invalid(full, value, f"a mapping with a {tag} key", meta.get("hint"))
            problems.bad.add(full)
            return True, MISSING
        others = set()  # a method or adapter reads only its own keys; estimator options are
        if not tag.startswith("^"):  # passed on whole, so another estimator's are refused
            others = set().union(*(key_paths(v, full) for k, v in meta["variants"].items()
                                   if k != chosen))
        sub = Walk(problems, walk.lenient, walk.tolerated | others)
        typed_value = typed(schema, value, full, sub, meta.get("hint"))
        return True, MISSING if typed_value is None else typed_value
    if is_dataclass(base) and (value is not None or not optional):
        if value is None:
            return False, None  # OmegaConf refuses None for a required mapping
        typed_value = typed(base, value, full, walk, meta.get("hint"))
        return True, MISSING if typed_value is None else typed_value
    args = typing.get_args(base)
    if typing.get_origin(base) is dict and len(args) == 2 and is_dataclass(args[1]) \
            and isinstance(value, Mapping):
        values = {k: typed(args[1], v, _join(full, k), walk, meta.get("hint"))
                  for k, v in value.items()}
        return True, {k: v for k, v in values.items() if v is not None}
    if typing.get_origin(base) is list and args and is_dataclass(args[0]) \
            and isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            problems.invalid(full, [], "a non-empty list", meta.get("hint"))
            return True, MISSING
        items = [typed(args[0], v, f"{full}[{i}]", walk, meta.get("hint")) for i, v in enumerate(value)]
        return True, [MISSING if v is None else v for v in items]
    return False, None
