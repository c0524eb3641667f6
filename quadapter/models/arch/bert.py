"""BERT-style encoders (``BertForSequenceClassification``: bert-base, all-MiniLM-L6-v2; RoBERTa).

Blocks ``encoder.layer.<i>``: ``attention.self.{query,key,value} → attention →
attention.output.dense → (+ residual) LayerNorm``, ``intermediate.dense → GELU → output.dense →
(+ residual) LayerNorm``; ``nn.Linear`` throughout. BERT is post-LayerNorm: each LayerNorm's output
is both the next sublayer's input and the residual stream, so a channel scale folded into it would
scale the residual too and change the function. The one exact region is V into the attention
output (attention mixes positions, never channels, and BERT has one V head per query head);
GELU sits between ``intermediate.dense`` and ``output.dense``. The schema offers only that region.

Heads differ: BERT classifies the pooler's output (``bert.pooler.dense → tanh → classifier``),
RoBERTa has no pooler and a two-layer head (``classifier.dense → tanh → classifier.out_proj``).
"""

from __future__ import annotations

from typing import Any

from quadapter.models.arch.base import Architecture, Heads, LinearOutput, Region

BLOCK_SITES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attention.output.dense": "attention.output.dense",
    "intermediate.dense": "intermediate.dense", "output.dense": "output.dense",
}
REGIONS = {
    "v_out": Region(LinearOutput("value"), ("attention.output.dense",),
                    "value -> attention.output.dense", repeat_kv=True),
}


POST_LN = ("BERT is post-LayerNorm: a LayerNorm's output also feeds the residual stream, so a scale "
           "folded into it changes the function; only value -> attention.output.dense folds exactly")


def _heads(config: Any) -> Heads:
    heads = config.num_attention_heads
    return Heads(heads, heads, config.hidden_size // heads)


BERT = Architecture(
    family="bert",
    model_types=("bert",),
    blocks="encoder.layer",
    block_sites=BLOCK_SITES,
    embeddings="embeddings",  # LayerNorm(word + position + token type) entering block 0
    regions=REGIONS,
    attention_output="attention.output.dense",  # attention's output projection (before dropout, residual, LayerNorm)
    context_key="max_position_embeddings",
    heads=_heads,
    doc="BERT encoders (bert-base-uncased, all-MiniLM-L6-v2), sequence classification",
    head_sites={"pooler": "bert.pooler.dense", "classifier": "classifier"},
    regions_note=POST_LN,
    head="sequence_classification",
    new_head=("classifier",),  # a pretrained encoder has no task head; the loader builds one
)

ROBERTA = Architecture(
    family="roberta",
    model_types=("roberta",),
    blocks="encoder.layer",
    block_sites=BLOCK_SITES,
    embeddings="embeddings",
    regions=REGIONS,
    attention_output="attention.output.dense",  # attention's output projection (before dropout, residual, LayerNorm)
    context_key="max_position_embeddings",
    reserved_positions=2,  # positions start after the padding index: 514 slots, 512 tokens
    heads=_heads,
    doc="RoBERTa encoders (roberta-base), sequence classification",
    head_sites={"classifier.dense": "classifier.dense", "classifier": "classifier.out_proj"},
    regions_note=POST_LN.replace("BERT", "RoBERTa"),
    head="sequence_classification",
    new_head=("classifier",),  # a pretrained encoder has no task head; the loader builds one
)
