"""Perplexity over non-overlapping windows, and the comparison report of several checkpoints.

Windows: the token stream is cut into floor(N / seq_len) windows of seq_len tokens (the tail
is dropped); each window is run from an empty cache and predicts its tokens 1..seq_len-1.
ppl = exp(sum of NLL / number of predicted tokens).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from converters.errors import UserError


def windows(token_ids: list[int] | torch.Tensor, seq_len: int) -> torch.Tensor:
    """int64 [n_windows, seq_len]; refuses a text shorter than one window."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if seq_len < 2:
        raise UserError(f"--seq-len must be at least 2, found {seq_len}")
    n = ids.numel() // seq_len
    if n == 0:
        raise UserError(f"evaluation text has {ids.numel()} tokens, shorter than one window of "
                        f"--seq-len {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


@torch.inference_mode()
def perplexity(model: Any, wins: torch.Tensor, batch_size: int = 1, progress: bool = True,
               desc: str = "eval") -> tuple[float, float, int]:
    """model: a ReferenceModel. returns (ppl, total NLL, predicted tokens)."""
    total, count = 0.0, 0
    bar = tqdm(total=wins.numel(), desc=desc, unit="tok", disable=not progress)
    for b in range(0, wins.shape[0], batch_size):
        batch = wins[b:b + batch_size]
        cache = model.new_cache(batch.shape[0], batch.shape[1])
        hidden = model.hidden_states(batch, cache)[:, :-1]
        target = batch[:, 1:].to(hidden.device)
        for r in range(batch.shape[0]):  # one row of logits at a time keeps memory small
            logits = model.logits(hidden[r])
            total += F.cross_entropy(logits, target[r], reduction="sum").item()
            count += target.shape[1]
        bar.update(batch.numel())
    bar.close()
    return math.exp(total / count), total, count


@dataclass
class EvalRow:
    checkpoint: str
    scheme: str
    settings: str
    perplexity: float
    delta_pct: float | None  # vs the first float (unquantized) checkpoint, else vs the first


def describe(config: dict[str, Any]) -> tuple[str, str]:
    """(scheme, settings) of a checkpoint config, for the report."""
    q = config.get("quantization") or {}
    algo = q.get("quant_algo")
    kv = q.get("kv_cache_quant_algo")
    scheme = config.get("lowbit", {}).get("scheme") or ("fp16" if algo is None else str(algo))
    parts = [f"dtype={config.get('dtype')}"]
    settings = config.get("lowbit", {}).get("settings") or {}
    parts += [f"{k}={v}" for k, v in settings.items() if v is not None]
    if kv and "kv" not in settings:
        parts.append(f"kv={kv}")
    return scheme, " ".join(parts)


def report(rows: list[EvalRow]) -> str:
    head = f"{'checkpoint':<28} {'scheme':<18} {'ppl':>9} {'delta':>8}  settings"
    lines = [head, "-" * len(head)]
    for r in rows:
        d = "" if r.delta_pct is None else f"{r.delta_pct:+.2f}%"
        lines.append(f"{r.checkpoint[-28:]:<28} {r.scheme:<18} {r.perplexity:9.4f} {d:>8}  "
                     f"{r.settings}")
    return "\n".join(lines)


def with_deltas(rows: list[EvalRow], is_float: list[bool]) -> list[EvalRow]:
    base_i = is_float.index(True) if any(is_float) else 0
    base = rows[base_i].perplexity
    for i, r in enumerate(rows):
        r.delta_pct = None if i == base_i else 100.0 * (r.perplexity / base - 1.0)
    return rows


def save_json(rows: list[EvalRow], meta: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    tmp.replace(path)


def save_plot(rows: list[EvalRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(rows)), 4))
    labels = [Path(r.checkpoint).name for r in rows]
    colors = {"fp16": "#7f7f7f", "smoothquant-w8a8": "#4472c4", "atom-w4a4": "#c55a11"}
    bars = ax.bar(labels, [r.perplexity for r in rows],
                  color=[colors.get(r.scheme, "#4472c4") for r in rows])
    ax.tick_params(axis="x", labelrotation=25)
    for b, r in zip(bars, rows):
        txt = f"{r.perplexity:.2f}" + ("" if r.delta_pct is None else f"\n{r.delta_pct:+.1f}%")
        ax.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel("perplexity (lower is better)")
    ax.margins(y=0.2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
