"""Per-architecture layer maps, as data: Hugging Face tensor names -> TensorRT-LLM names.

Every supported decoder is a pre-norm Llama-style stack; they differ in biases and defaults.
`hf` templates use `{i}` for the layer index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# TensorRT-LLM name (per layer, below `transformer.layers.{i}.`) -> HF name (below
# `model.layers.{i}.`). qkv is assembled from three HF tensors.
LAYER_TENSORS: dict[str, str] = {
    "input_layernorm.weight": "input_layernorm.weight",
    "attention.q.weight": "self_attn.q_proj.weight",  # [nh*d, H]   -> part of attention.qkv
    "attention.k.weight": "self_attn.k_proj.weight",  # [nkv*d, H]
    "attention.v.weight": "self_attn.v_proj.weight",  # [nkv*d, H]
    "attention.dense.weight": "self_attn.o_proj.weight",  # [H, nh*d]
    "post_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.fc.weight": "mlp.gate_proj.weight",  # [I, H]  (TensorRT-LLM: fc = gate, SiLU side)
    "mlp.gate.weight": "mlp.up_proj.weight",  # [I, H]  (TensorRT-LLM: gate = up)
    "mlp.proj.weight": "mlp.down_proj.weight",  # [H, I]
}
QKV_BIAS: dict[str, str] = {
    "attention.q.bias": "self_attn.q_proj.bias",
    "attention.k.bias": "self_attn.k_proj.bias",
    "attention.v.bias": "self_attn.v_proj.bias",
}
GLOBAL_TENSORS: dict[str, str] = {
    "transformer.vocab_embedding.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",  # absent in HF when tied: the embedding is used
}
HF_LAYER_PREFIX = "model.layers.{i}."


@dataclass(frozen=True)
class Architecture:
    name: str
    attn_bias: bool  # q/k/v projections carry a bias
    # SmoothQuant migration strength used when --alpha is not given: a number, or "auto" (the
    # per-layer search). Measured on SmolLM2-135M (docs/accuracy.md), a fixed alpha is fragile
    # (0.75: +0.86%, 0.8: +2.62%, 0.85: +1.24% perplexity) while auto gives +0.85%.
    smoothquant_alpha: float | str = "auto"
    hf_model_types: tuple[str, ...] = field(default=())


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("LlamaForCausalLM", attn_bias=False,
                                     hf_model_types=("llama",)),
    "MistralForCausalLM": Architecture("MistralForCausalLM", attn_bias=False,
                                       hf_model_types=("mistral",)),
    "Qwen2ForCausalLM": Architecture("Qwen2ForCausalLM", attn_bias=True,
                                     hf_model_types=("qwen2",)),
}


def get_architecture(name: str) -> Architecture:
    from converters.errors import UserError

    if name not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {name!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[name]
