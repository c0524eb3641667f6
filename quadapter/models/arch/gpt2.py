"""GPT-2 (``GPT2LMHeadModel``: gpt2 to gpt2-xl, distilgpt2, and the models quadapter pretrains).

Blocks ``transformer.h.<i>``: ``ln_1 → attn.c_attn`` (fused Q, K, V) ``→ attn.c_proj``, ``ln_2 →
mlp.c_fc → GELU → mlp.c_proj``. Its linears are HF ``Conv1D`` (weight [in, out]), which the
generic site code handles. Scale regions: both LayerNorms into their consumers, and V (the last
third of ``c_attn``'s outputs) into ``attn.c_proj``. The GELU → ``mlp.c_proj`` path has no linear
producer and cannot fold.
"""

from __future__ import annotations

from typing import Any

from quadapter.models.arch.base import Architecture, Heads, LinearOutput, Norm, Region


def _heads(config: Any) -> Heads:
    return Heads(config.n_head, config.n_head, config.n_embd // config.n_head)


def _v_channels(config: Any) -> tuple[int, int]:
    return 2 * config.n_embd, 3 * config.n_embd  # c_attn's outputs are [Q | K | V]


GPT2 = Architecture(
    family="gpt2",
    model_types=("gpt2",),
    blocks="h",
    block_sites={name: name for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")},
    embeddings="drop",  # token + position embedding sum (after dropout) entering block 0
    regions={
        "ln1_qkv": Region(Norm("ln_1"), ("attn.c_attn",), "ln_1 -> attn.c_attn"),
        "ln2_fc": Region(Norm("ln_2"), ("mlp.c_fc",), "ln_2 -> mlp.c_fc"),
        "v_proj": Region(LinearOutput("attn.c_attn", _v_channels), ("attn.c_proj",),
                         "V of attn.c_attn -> attn.c_proj", repeat_kv=True),
    },
    attention_output="attn.c_proj",  # attention's output projection: the sublayer's output before the residual add
    context_key="n_positions",
    heads=_heads,
    doc="GPT-2 (gpt2, distilgpt2, tiny, proxy); sequence classification too (task=glue)",
    classifier={"classifier": "score"},  # GPT2ForSequenceClassification: a new linear on the last real token
)


def new_model(**config: Any) -> Any:
    """A randomly initialized ``GPT2LMHeadModel`` with these ``GPT2Config`` values (quadapter
    pretrains tiny and proxy from one)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(**config))
