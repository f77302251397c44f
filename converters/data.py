"""Text for calibration and evaluation, and the one definition of how they are split.

Default text: CPython's `pydoc_data.topics` (real English technical prose, ~113k SmolLM2
tokens, shipped with every CPython). Topics are taken in sorted key order; every 4th topic
(index % 4 == 0, ~29.7k SmolLM2 tokens) is held out for evaluation, the others (~83k tokens)
are for calibration, so the two never overlap.
"""

from __future__ import annotations

from pathlib import Path

from converters.errors import UserError

EVAL_EVERY = 4


def _topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return sorted(topics.items())


def evaluation_text() -> str:
    return "\n\n".join(t for i, (_, t) in enumerate(_topics()) if i % EVAL_EVERY == 0)


def calibration_text() -> str:
    return "\n\n".join(t for i, (_, t) in enumerate(_topics()) if i % EVAL_EVERY != 0)


def read_text_file(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"text file {p} does not exist")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: expected UTF-8 text ({e})") from None


DATASETS = {
    # name -> (datasets.load_dataset args, split, text column)
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), "test", "text"),
    "wikitext2-train": (("wikitext", "wikitext-2-raw-v1"), "train", "text"),
    "c4": (("allenai/c4", "en"), "validation", "text"),
}


def dataset_text(name: str, max_chars: int = 2_000_000) -> str:
    """Text of a named dataset through `datasets` (needs network on first use)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the `datasets` package: pip install datasets") from None
    args, split, col = DATASETS[name]
    try:
        if name == "c4":
            ds = datasets.load_dataset(*args, split=split, streaming=True)
        else:
            ds = datasets.load_dataset(*args, split=split)
    except Exception as e:  # network errors come in many types
        raise UserError(f"cannot load dataset {name!r} ({type(e).__name__}: {e}); it needs "
                        f"network access to the Hugging Face hub, or a cached copy") from None
    parts, n = [], 0
    for row in ds:
        parts.append(row[col])
        n += len(row[col])
        if n >= max_chars:
            break
    return "\n\n".join(parts)
