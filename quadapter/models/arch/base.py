"""What an architecture adapter declares about a model family, as plain data.

A family is described, not programmed: where its blocks are, which linear layers each block holds
(the quantizer sites), which module produces the input of which linears (the scale regions) and
how its config names heads and context length. The generic code in ``quadapter.models`` (sites,
regions, outlier profile) interprets these declarations, so adding a family is one module of
declarations and never a second copy of the quantization or folding logic. Imports no torch: the
config schema reads the site and region names from here.

Scale regions follow Brevitas' graph equalization (``Region(srcs, sinks)``): one producer, one or
more consumers that read the producer's output and share one per-channel α. α folds into the
producer (a norm's weight and bias, or a linear's output channels) and 1/α into every consumer's
input channels, which leaves the model's function unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Norm:
    """A normalization layer producing the region's input: α folds into its weight (and bias).

    ``path``: block-relative module name. LayerNorm has γ and β, RMSNorm only γ: both scale.
    """

    path: str


@dataclass(frozen=True)
class LinearOutput:
    """A linear layer producing the region's input: α folds into its output channels.

    ``site``: the producer's quantizer site name. ``channels(config) -> (start, stop)`` selects a
    slice of its output channels when only part of them feed the consumers (GPT-2's fused
    ``c_attn``, whose last third is V); ``None`` = all of them.
    """

    site: str
    channels: Callable[[Any], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Region:
    """One producer, the consumers (quantizer site names) that read its output, one shared α.

    ``repeat_kv``: the producer is attention's V and the consumer reads the attention output, so
    the consumer's input channels are the query heads' and α, living on the KV channels, repeats
    across the query heads that share each KV head (grouped-query attention; the identity when
    every head has its own KV head).
    """

    producer: Norm | LinearOutput
    consumers: tuple[str, ...]
    doc: str
    repeat_kv: bool = False


@dataclass(frozen=True)
class Heads:
    """Attention shape from a config: query heads, key/value heads, channels per head."""

    query: int
    kv: int
    dim: int


@dataclass(frozen=True)
class Architecture:
    """One model family, keyed by the ``config.model_type`` values it covers.

    Paths: ``blocks`` and ``embeddings`` are relative to the base model (``model.base_model``,
    e.g. ``transformer`` of GPT-2, ``model`` of Llama); ``block_sites`` map each quantizer site
    name to its linear layer relative to a block. Every linear layer of a block must be one of
    them (the sites refuse a block holding another: nothing escapes quantization silently).
    ``head_sites`` map the optional sites outside the blocks (a causal LM's ``lm_head``, an
    encoder's pooler and classifier) to their linear layers relative to the model itself.
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    block_sites: Mapping[str, str]
    embeddings: str
    regions: Mapping[str, Region]
    context_key: str
    heads: Callable[[Any], Heads]
    doc: str = ""
    head_sites: Mapping[str, str] = field(default_factory=lambda: {"lm_head": "lm_head"})
    regions_note: str = ""  # why a family offers no more regions than it does (shown on refusal)
    head: str = "causal_lm"  # what its models end in: causal_lm, or sequence_classification (encoders)
    reserved_positions: int = 0  # position slots the context cannot use (RoBERTa's padding offset)
    new_head: tuple[str, ...] = ()  # parameters a task model gets fresh (a classifier), by prefix
    attention_output: str = ""  # the block site whose output is the attention sublayer's (distillation)
    classifier: Mapping[str, str] = field(default_factory=dict)  # a causal LM family's head sites when its
    # model is built as a sequence classifier (GPT-2: ``score`` on the last real token); empty = it cannot be

    def supported_heads(self) -> tuple[str, ...]:
        """The heads the family's models come with: its own, and sequence classification where it
        declares a ``classifier``."""
        return (self.head, "sequence_classification") if self.classifier else (self.head,)

    def as_classifier(self) -> Architecture:
        """The family as a sequence classifier: ``classifier`` as its head sites, built fresh."""
        return replace(self, head="sequence_classification", head_sites=dict(self.classifier),
                       new_head=tuple(self.classifier.values()), classifier={})

    @property
    def sites(self) -> tuple[str, ...]:
        """Every quantizer site name: the block linears, the head sites, ``embeddings``, ``residual``."""
        return (*self.block_sites, *self.head_sites, "embeddings", "residual")

    def task_head(self) -> tuple[str, ...]:
        """The layers a parameter-efficient method fine-tunes in full with a new task head: every
        head site (an encoder's pooler and classifier: a pretrained pooler feeds a new classifier);
        none for a family whose head is pretrained (a causal LM's tied ``lm_head``)."""
        return tuple(self.head_sites.values()) if self.new_head else ()

    def context_length(self, config: Any) -> int:
        """The longest context the model's position encoding was built for."""
        return int(getattr(config, self.context_key)) - self.reserved_positions

    def block_list(self, model: Any) -> list[tuple[str, Any]]:
        """``(full module name, block)`` for every block, in order."""
        base = model.base_model
        prefix = "" if base is model else f"{model.base_model_prefix}."
        return [(f"{prefix}{self.blocks}.{i}", block)
                for i, block in enumerate(base.get_submodule(self.blocks))]

    def embeddings_path(self, model: Any) -> str:
        base = model.base_model
        return self.embeddings if base is model else f"{model.base_model_prefix}.{self.embeddings}"

    def describe_regions(self) -> str:
        return ", ".join(f"{name} ({region.doc})" for name, region in self.regions.items())
