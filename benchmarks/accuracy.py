"""Accuracy report: perplexity of each quantization scheme against the float checkpoint.

One calibration pass (statistics, Hessians, samples) serves every configuration; each is
quantized, written, and evaluated on the held-out evaluation text. Prints a table and writes
JSON, a markdown table and a bar chart to --out.

    python benchmarks/accuracy.py --out benchmarks/results/accuracy [--model PATH]
        [--max-windows N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from builder.evaluate import EvalRow, describe, perplexity, report, save_plot, windows
from builder.runtime import ReferenceModel
from converters.checkpoint import convert, read_checkpoint
from converters.data import calibration_text, evaluation_text
from converters.loader import open_model
from converters.quantize import calibrate, quantize_model
from converters.schemes import (
    AtomConfig,
    CalibrationConfig,
    KVCacheConfig,
    QuantizeConfig,
    SmoothQuantConfig,
)

KV4 = KVCacheConfig(kind="int4", k_group_size=32, smooth_k=0.5)
CONFIGS: dict[str, QuantizeConfig] = {  # every default is the CLI's
    "sq-per-token": QuantizeConfig(scheme="smoothquant-w8a8"),
    "sq-per-tensor": QuantizeConfig(scheme="smoothquant-w8a8",
                                    smoothquant=SmoothQuantConfig(act_quant="per-tensor")),
    "sq-per-token-rtn": QuantizeConfig(scheme="smoothquant-w8a8",
                                       smoothquant=SmoothQuantConfig(gptq=False)),
    "sq-per-tensor-rtn": QuantizeConfig(scheme="smoothquant-w8a8",
                                        smoothquant=SmoothQuantConfig(act_quant="per-tensor",
                                                                      gptq=False)),
    "fp16-kv4": QuantizeConfig(kv=KV4),
    "atom-g128": QuantizeConfig(scheme="atom-w4a4"),
    "atom-g128-kv4": QuantizeConfig(scheme="atom-w4a4", kv=KV4),
    "atom-g64": QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(group_size=64)),
    "atom-g64-kv4": QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(group_size=64), kv=KV4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/accuracy"))
    ap.add_argument("--max-windows", type=int, default=None,
                    help="evaluate on the first N windows only (default: the whole split)")
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations to run")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    names = a.only or list(CONFIGS)
    src = open_model(a.model)
    t0 = time.perf_counter()
    base = a.out / "fp16"
    convert(src, base, dtype="float16", force=True, progress=False,
            extra_config={"lowbit": {"scheme": "fp16"}})
    cal = CalibrationConfig()
    stats = calibrate(src, calibration_text(), cal)
    calib_s = time.perf_counter() - t0
    print(f"calibration pass: {calib_s:.0f} s")
    times = {}
    for n in names:
        t = time.perf_counter()
        quantize_model(open_model(a.model), a.out / n, CONFIGS[n], "", force=True,
                       precomputed=stats, progress=False,
                       extra_config={"lowbit": {"scheme": CONFIGS[n].scheme}})
        times[n] = time.perf_counter() - t
        print(f"{n}: quantized and written in {times[n]:.0f} s")
    ck0 = read_checkpoint(base)
    tok = ck0.load_tokenizer()
    wins = windows(tok(evaluation_text(), add_special_tokens=False).input_ids, 512)
    if a.max_windows:
        wins = wins[: a.max_windows]
    rows = []
    for n in ["fp16", *names]:
        ck = read_checkpoint(a.out / n)
        ppl, _, _ = perplexity(ReferenceModel(ck, device="cpu"), wins, desc=n)
        scheme, settings = describe(ck.config)
        rows.append(EvalRow(n, scheme, settings, ppl, None))
    base_ppl = rows[0].perplexity
    for r in rows[1:]:
        r.delta_pct = 100 * (r.perplexity / base_ppl - 1)
    table = report(rows)
    print(table)
    meta = {"model": src.description, "eval_tokens": int(wins.numel()),
            "calibration": {"num_samples": cal.num_samples, "seq_len": cal.seq_len},
            "calibration_seconds": round(calib_s, 1),
            "quantize_seconds": {k: round(v, 1) for k, v in times.items()},
            "rows": [r.__dict__ for r in rows]}
    (a.out / "accuracy.json").write_text(json.dumps(meta, indent=2) + "\n")
    md = ["| config | scheme | perplexity | delta vs fp16 | settings |", "|---|---|---|---|---|"]
    for r in rows:
        d = "" if r.delta_pct is None else f"{r.delta_pct:+.2f}%"
        md.append(f"| {r.checkpoint} | {r.scheme} | {r.perplexity:.3f} | {d} | {r.settings} |")
    (a.out / "accuracy.md").write_text("\n".join(md) + "\n")
    save_plot(rows, a.out / "accuracy.png")


if __name__ == "__main__":
    main()
