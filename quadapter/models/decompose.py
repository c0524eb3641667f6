"""Kronecker decomposition of a model's block linears (KnGPT2), through the architecture adapter.

``kronecker_decompose`` replaces the chosen sites of every block (the family's site names, from its
adapter) by ``KroneckerLinear`` layers initialized at the nearest
Kronecker product of their pretrained weights. Factor shapes are given per site or chosen for a
target compression (``choose_factors``). What was done is a ``spec`` (per layer: factor shapes and
rank), saved beside the weights as ``kronecker.json``; ``apply_spec`` rebuilds the same structure on
a freshly loaded model so that the saved factors load into it (``quadapter.models.loading``).
The token embedding may be factored too (``embedding``: KnGPT2 compresses it), through transformers'
``get/set_input_embeddings``; a head tied to it then reads the same factors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from quadapter.models.arch import for_model
from quadapter.models.kronecker import KroneckerEmbedding, KroneckerLinear, TiedKroneckerHead
from quadapter.models.sites import check_site_names, input_axis, is_linear
from quadapter.quant.sim import parent_module

SPEC_FILE = "kronecker.json"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_factors(out_features: int, in_features: int, compression: float,
                   rank: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Factor shapes ``(m1, n1), (m2, n2)`` with ``m1·m2 = out`` and ``n1·n2 = in`` whose parameter
    count ``rank·(m1·n1 + m2·n2)`` is the largest not above ``out·in / compression`` (the least
    compression that reaches the target); ties go to the most balanced pair of factors."""
    if compression < 1:
        raise ValueError(f"compression {compression} must be >= 1 (the dense layer's parameters over the factors')")
    budget = out_features * in_features / compression
    best = None
    for m1 in _divisors(out_features):
        for n1 in _divisors(in_features):
            m2, n2 = out_features // m1, in_features // n1
            params = rank * (m1 * n1 + m2 * n2)
            if params > budget:
                continue
            key = (params, -abs(m1 * n1 - m2 * n2))
            if best is None or key > best[0]:
                best = (key, ((m1, n1), (m2, n2)))
    if best is None:
        raise ValueError(f"no Kronecker factors of a [{out_features}, {in_features}] weight reach compression "
                         f"{compression} at rank {rank}: lower the compression or the rank")
    return best[1]


def _dense_weight(layer: nn.Module) -> torch.Tensor:
    """The weight as [out, in], whichever layout the layer stores (``sites.input_axis``)."""
    return layer.weight.T if input_axis(layer) == 0 else layer.weight


@torch.no_grad()
def kronecker_decompose(model: nn.Module, sites: Sequence[str] | None, compression: float | None = None,
                        factors: Mapping[str, Sequence[int]] | None = None, rank: int = 1,
                        embedding: bool = False) -> dict[str, Any]:
    """Replace ``sites`` (null: every block linear) of every block by nearest-Kronecker-product
    factors, and the token embedding too with ``embedding``; returns the spec and the parameter
    counts before and after.

    ``factors`` maps a site name (or ``embedding``: A's shape [V1, d1]) to its ``[m1, n1]`` (A's
    shape; B's follows from the weight); sites without an entry get ``choose_factors(…,
    compression, rank)``.
    """
    arch = for_model(model)
    names = check_site_names(sites, arch) if sites is not None else list(arch.block_sites)
    unknown = [s for s in names if s not in arch.block_sites]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not block linears of {arch.family} "
                         f"({', '.join(arch.block_sites)})")
    before = sum(p.numel() for p in model.parameters())  # tied weights once
    layers: dict[str, dict[str, Any]] = {}
    for block_name, block in arch.block_list(model):
        for site in names:
            path = arch.block_sites[site]
            layer = block.get_submodule(path)
            if not is_linear(layer):
                raise TypeError(f"{block_name}.{path} is a {type(layer).__name__}, not a linear layer")
            weight = _dense_weight(layer)
            shapes = _shapes(site, *weight.shape, (factors or {}).get(site), compression, rank)
            kron = KroneckerLinear.from_weight(weight, layer.bias, *shapes, rank=rank).to(weight.device)
            parent, attr = parent_module(block, path)
            setattr(parent, attr, kron)
            layers[f"{block_name}.{path}"] = {"a": list(shapes[0]), "b": list(shapes[1]), "rank": rank,
                                             "bias": layer.bias is not None}
    spec: dict[str, Any] = {"layers": layers}
    if embedding:
        spec["embedding"] = _decompose_embedding(model, (factors or {}).get("embedding"), compression, rank)
    after = sum(p.numel() for p in model.parameters())
    return {"spec": spec, "params_before": before, "params_after": after, "compression": before / after}


def _shapes(site: str, out_f: int, in_f: int, given: Sequence[int] | None, compression: float | None,
            rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    if given is not None:
        m1, n1 = (int(v) for v in given)
        if out_f % m1 or in_f % n1:
            raise ValueError(f"kronecker factors for {site}: [{m1}, {n1}] do not divide its weight "
                             f"[{out_f}, {in_f}]; give divisors of its output and input sizes")
        return (m1, n1), (out_f // m1, in_f // n1)
    if compression is None:
        raise ValueError(f"no factor shapes for site {site}: give its factors or a compression")
    return choose_factors(out_f, in_f, compression, rank)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _decompose_embedding(model: nn.Module, given: Sequence[int] | None, compression: float | None,
                         rank: int) -> dict[str, Any]:
    """The token embedding as a ``KroneckerEmbedding`` (and a head tied to it reading its factors)."""
    dense, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and getattr(head, "weight", None) is dense.weight
    shapes = _shapes("embedding", *dense.weight.shape, given, compression, rank)
    name = _module_name(model, dense)
    kron = KroneckerLinear.from_weight(dense.weight, None, *shapes, rank=rank).to(dense.weight.device)
    model.set_input_embeddings(KroneckerEmbedding(kron))
    if tied:  # the head reads the embedding's factors; the saved config no longer ties dense weights
        model.set_output_embeddings(TiedKroneckerHead(model.get_input_embeddings()))
        model.config.tie_word_embeddings = False
    return {"name": name, "a": list(shapes[0]), "b": list(shapes[1]), "rank": rank, "tied": tied}


def apply_spec(model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Give ``model`` the structure ``spec`` describes (factors zero until a state dict loads)."""
    def empty(entry: Mapping[str, Any], bias: bool) -> KroneckerLinear:
        rank, a, b = entry["rank"], entry["a"], entry["b"]
        return KroneckerLinear(torch.zeros(rank, *a), torch.zeros(rank, *b), torch.zeros(a[0] * b[0]) if bias else None)

    for name, entry in spec["layers"].items():
        parent, attr = parent_module(model, name)
        setattr(parent, attr, empty(entry, entry.get("bias", True)))
    entry = spec.get("embedding")
    if entry:
        model.set_input_embeddings(KroneckerEmbedding(empty(entry, bias=False)))
        if entry["tied"]:
            model.set_output_embeddings(TiedKroneckerHead(model.get_input_embeddings()))


def spec_modules(spec: Mapping[str, Any]) -> list[str]:
    """The module names whose parameters the spec replaced (the factored layers, the embedding)."""
    names = list(spec["layers"])
    if spec.get("embedding"):
        names.append(spec["embedding"]["name"])
    return names


def save_decomposed(model: nn.Module, tokenizer, spec: Mapping[str, Any], out: Path) -> Path:
    """``save_pretrained`` (the factors under their module names) plus ``kronecker.json``."""
    out = Path(out)
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=1))
    return out
