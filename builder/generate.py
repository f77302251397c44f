"""Text generation with the reference runtime: prefill, then one token per step from the cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch


def sample(logits: torch.Tensor, temperature: float, top_p: float,
           generator: torch.Generator | None) -> int:
    """logits float32 [vocab]. temperature 0 = greedy; top_p keeps the smallest set of tokens
    whose probability mass reaches top_p."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        p, idx = probs.sort(descending=True)
        keep = p.cumsum(-1) - p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, idx[keep], p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = True) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)
    return list(tokenizer(prompt).input_ids)


@torch.inference_mode()
def generate(model: Any, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, eos_ids: set[int] | None = None, seed: int = 0,
             ) -> Iterator[int]:
    """Yields new token ids one by one (stops at an EOS id or after max_new_tokens)."""
    gen = torch.Generator().manual_seed(seed)
    cache = model.new_cache(1, len(ids) + max_new_tokens)
    logits = model.forward(torch.tensor([ids]), cache)[0, -1]
    for _ in range(max_new_tokens):
        tok = sample(logits, temperature, top_p, gen)
        yield tok
        if eos_ids and tok in eos_ids:
            return
        logits = model.forward(torch.tensor([[tok]]), cache)[0, -1]


def stream_text(tokenizer: Any, tokens: Iterator[int], write: Callable[[str], Any]) -> list[int]:
    """Decode incrementally, writing only the new text each step (multi-byte safe)."""
    out: list[int] = []
    shown = ""
    for t in tokens:
        out.append(t)
        text = tokenizer.decode(out, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more tokens
            continue
        write(text[len(shown):])
        shown = text
    return out
