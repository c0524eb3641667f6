"""Architecture adapters: one per model family, keyed by ``config.model_type``.

Each family module (``gpt2``, ``llama``, ``bert`` with RoBERTa) declares its blocks, quantizer sites, scale regions and
config names (``base.Architecture``); nothing outside this package names a family's modules.
Adding a family is one module here, its entry in ``FAMILIES`` and its model configs; the shared
conformance suite (``tests/test_arch_conformance.py``) runs on every family. Imports no torch.
"""

from __future__ import annotations

from typing import Any

from quadapter.models.arch.base import Architecture, Heads, LinearOutput, Norm, Region
from quadapter.models.arch.bert import BERT, ROBERTA
from quadapter.models.arch.gpt2 import GPT2
from quadapter.models.arch.llama import LLAMA

FAMILIES: dict[str, Architecture] = {arch.family: arch for arch in (GPT2, LLAMA, BERT, ROBERTA)}
BY_MODEL_TYPE: dict[str, Architecture] = {t: arch for arch in FAMILIES.values() for t in arch.model_types}
CLASSIFIERS: dict[str, Architecture] = {a.family: a.as_classifier() for a in FAMILIES.values() if a.classifier}

__all__ = ["Architecture", "FAMILIES", "Heads", "LinearOutput", "Norm", "Region", "families_with_head",
           "family", "for_model", "known_model_types"]


def known_model_types() -> str:
    return "; ".join(f"{a.family}: {', '.join(a.model_types)}" for a in FAMILIES.values())


def families_with_head(head: str) -> list[str]:
    """The families whose models come with ``head`` (for messages that name the fitting ones)."""
    return [a.family for a in FAMILIES.values() if head in a.supported_heads()]


def family(name: str, head: str | None = None) -> Architecture:
    """The family named ``name`` (``model.arch``); with ``head="sequence_classification"``, a causal
    LM family's classifier variant (what its models are on GLUE)."""
    if name not in FAMILIES:
        raise ValueError(f"model.arch={name!r} is not a known architecture family: expected one of "
                         f"{', '.join(FAMILIES)}")
    arch = FAMILIES[name]
    return CLASSIFIERS[name] if head == "sequence_classification" and name in CLASSIFIERS else arch


def for_model(model: Any) -> Architecture:
    """The family of a loaded model, by its ``config.model_type``; a causal LM family's sequence
    classifier (``GPT2ForSequenceClassification``) gets the family's classifier variant."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in BY_MODEL_TYPE:
        raise ValueError(f"quadapter has no architecture adapter for model type {model_type!r} "
                         f"(known model types: {known_model_types()})")
    classifies = type(model).__name__.endswith("ForSequenceClassification")
    return family(BY_MODEL_TYPE[model_type].family, "sequence_classification" if classifies else None)
