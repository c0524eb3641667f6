"""The Llama family (``LlamaForCausalLM``: SmolLM2, TinyLlama, Llama 2/3; Mistral and Qwen2 share
the same module map, Qwen2 with biases on q/k/v).

Blocks ``model.layers.<i>``: ``input_layernorm → self_attn.{q,k,v}_proj → attention →
self_attn.o_proj``, ``post_attention_layernorm → mlp.{gate,up}_proj → SiLU(gate)·up →
mlp.down_proj``; RMSNorm (weight only) and ``nn.Linear``. Scale regions mirror GPT-2's — both norms
into their consumers, V into the attention output (with grouped-query attention α lives on the KV
channels and repeats across the query heads sharing them) — plus ``up_down``, which GPT-2 cannot
offer: down_proj's input is SiLU(gate)·up, linear in up_proj's output channel by channel, so
scaling up_proj's output channel j scales down_proj's input channel j exactly.
"""

from __future__ import annotations

from typing import Any

from quadapter.models.arch.base import Architecture, Heads, LinearOutput, Norm, Region


def _heads(config: Any) -> Heads:
    query = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // query
    return Heads(query, getattr(config, "num_key_value_heads", None) or query, dim)


LLAMA = Architecture(
    family="llama",
    model_types=("llama", "mistral", "qwen2"),
    blocks="layers",
    block_sites={
        "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj",
        "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
    },
    embeddings="embed_tokens",  # token embeddings entering block 0 (positions are rotary, inside attention)
    regions={
        "ln1_qkv": Region(Norm("input_layernorm"), ("q_proj", "k_proj", "v_proj"),
                          "input_layernorm -> q_proj, k_proj, v_proj"),
        "ln2_fc": Region(Norm("post_attention_layernorm"), ("gate_proj", "up_proj"),
                         "post_attention_layernorm -> gate_proj, up_proj"),
        "v_proj": Region(LinearOutput("v_proj"), ("o_proj",), "v_proj -> o_proj", repeat_kv=True),
        "up_down": Region(LinearOutput("up_proj"), ("down_proj",), "up_proj -> down_proj"),
    },
    attention_output="o_proj",  # attention's output projection: the sublayer's output before the residual add
    context_key="max_position_embeddings",
    heads=_heads,
    doc="Llama family (llama, mistral, qwen2: SmolLM2, TinyLlama, Llama 2/3, Mistral, Qwen2)",
)
