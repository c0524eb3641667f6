"""Embedded corpora: text every Python installation carries, so the default run needs no download.

Two domains give an in-/out-of-distribution protocol at laptop scale:
- ``prose``: the language reference topics shipped as ``pydoc_data`` plus the docstrings of the
  standard library's modules, classes and functions (read with ``ast``, never imported);
- ``code``: the standard library's Python sources.

Documents are assigned to train/validation/test by a hash of their name, so the split of a document
never changes when others are added, and the docstrings of a test-split module are never in any
training split of either domain.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sysconfig
import tokenize
from functools import lru_cache
from pathlib import Path

DOMAINS = ("prose", "code")
SPLITS = ("train", "validation", "test")

# Parts of the stdlib that are tests, vendored tools or data rather than library code.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "ensurepip",
              "turtledemo", "__pycache__", "Tools", "config-3", "venv"}


def split_of(name: str) -> str:
    """Stable 90/5/5 split by document name."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("config-") for p in parts[:-1]):
            continue
        files.append(path)
    return files


def _read_source(path: Path) -> str | None:
    try:
        with tokenize.open(path) as f:  # honours PEP 263 encoding cookies
            return f.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def _docstrings(source: str) -> str:
    """Module, class and function docstrings of one file, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    docs = (ast.get_docstring(n, clean=True) for n in nodes)
    return "\n\n".join(d for d in docs if d and len(d.split()) >= 4)


@lru_cache(maxsize=None)
def _documents() -> dict[str, dict[str, list[str]]]:
    """{domain: {split: [document, ...]}} for all domains, built in one pass over the sources."""
    import pydoc_data.topics

    out = {d: {s: [] for s in SPLITS} for d in DOMAINS}
    for topic in sorted(pydoc_data.topics.topics):
        text = inspect.cleandoc(pydoc_data.topics.topics[topic])
        out["prose"][split_of(f"topic:{topic}")].append(text)
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_sources():
        source = _read_source(path)
        if not source or not source.strip():
            continue
        split = split_of(f"module:{path.relative_to(root).as_posix()}")
        out["code"][split].append(source)
        docs = _docstrings(source)
        if docs:
            out["prose"][split].append(docs)
    return out


def embedded_documents(domain: str, split: str) -> list[str]:
    """The documents of one embedded domain and split."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown embedded domain {domain!r}; available: {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for embedded corpora; available: {', '.join(SPLITS)}")
    return _documents()[domain][split]
