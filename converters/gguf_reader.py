"""GGUF weights and config read with the `gguf` package in one parse (transformers would parse
the file once for the config and once for the weights). The tokenizer still comes from
transformers. Tensors are dequantized to float32 lazily, one at a time.

llama.cpp's converter stores q_proj and k_proj rows permuted for its RoPE kernel: per head,
rows [0, d/2) and [d/2, d) are interleaved. `_unpermute` restores the Hugging Face order:
    W_gguf.view(h, d/2, 2, K) -> swap the two middle axes -> W_hf.view(h, 2, d/2, K)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.errors import UserError

# GGUF arch -> (HF architecture, HF model_type)
GGUF_ARCHS = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}

# GGUF tensor name (per block) -> HF name (per layer)
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class GGUFFile:
    """Config (as a transformers-like namespace) and lazy HF-named tensors of a GGUF file."""

    def __init__(self, path: Path):
        import gguf

        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as e:  # gguf raises ValueError, struct errors, ...
            raise UserError(f"{path}: not a readable GGUF file ({e})") from None
        f = self.reader.fields

        def val(key: str, default: Any = None) -> Any:
            return f[key].contents() if key in f else default

        arch = val("general.architecture")
        if arch not in GGUF_ARCHS:
            from converters.architectures import ARCHITECTURES

            raise UserError(f"{path}: unsupported GGUF architecture {arch!r}; supported: "
                            f"{', '.join(GGUF_ARCHS)} (HF: {', '.join(sorted(ARCHITECTURES))})")
        hf_arch, model_type = GGUF_ARCHS[arch]
        self.tensors = {}
        for t in self.reader.tensors:
            if t.name.startswith("blk."):
                _, i, rest = t.name.split(".", 2)
                if rest in BLOCK_NAMES:
                    self.tensors[f"model.layers.{i}.{BLOCK_NAMES[rest]}"] = t
            elif t.name in GLOBAL_NAMES:
                self.tensors[GLOBAL_NAMES[t.name]] = t
        nh = int(val(f"{arch}.attention.head_count"))
        hidden = int(val(f"{arch}.embedding_length"))
        vocab = val(f"{arch}.vocab_size") or len(f["tokenizer.ggml.tokens"].data)
        scaling = None
        if val(f"{arch}.rope.scaling.type") == "linear":
            scaling = {"rope_type": "linear", "factor": float(val(f"{arch}.rope.scaling.factor"))}
        elif val(f"{arch}.rope.scaling.type") not in (None, "none"):
            raise UserError(f"{path}: unsupported rope scaling "
                            f"{val(f'{arch}.rope.scaling.type')!r} in GGUF")
        self.config = _Namespace(
            architectures=[hf_arch], model_type=model_type, vocab_size=int(vocab),
            hidden_size=hidden, num_hidden_layers=int(val(f"{arch}.block_count")),
            num_attention_heads=nh,
            num_key_value_heads=int(val(f"{arch}.attention.head_count_kv", nh)),
            head_dim=int(val(f"{arch}.rope.dimension_count", hidden // nh)),
            intermediate_size=int(val(f"{arch}.feed_forward_length")), hidden_act="silu",
            rms_norm_eps=float(val(f"{arch}.attention.layer_norm_rms_epsilon")),
            rope_theta=float(val(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=scaling,
            max_position_embeddings=int(val(f"{arch}.context_length")),
            tie_word_embeddings="lm_head.weight" not in self.tensors,
            attention_bias="model.layers.0.self_attn.q_proj.bias" in self.tensors,
        )
        # llama.cpp permutes q/k rows only for the llama architecture
        self._permuted = arch == "llama"

    def read(self, name: str) -> torch.Tensor:
        from gguf.quants import dequantize

        t = self.tensors[name]
        shape = tuple(int(s) for s in reversed(t.shape))  # GGUF lists ne0 (columns) first
        a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        w = torch.from_numpy(a.copy())
        if self._permuted and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias",
                                             "k_proj.bias")):
            heads = (self.config.num_attention_heads if "q_proj" in name
                     else self.config.num_key_value_heads)
            w = _unpermute(w, heads)
        return w


class _Namespace:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
