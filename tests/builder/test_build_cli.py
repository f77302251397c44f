"""python -m builder build: model / checkpoint -> verified ONNX (+ engine where TensorRT is)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from builder.__main__ import main
from converters.checkpoint import convert
from converters.loader import open_model
from tests.conftest import tiny_hf_model

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
no_trt = pytest.mark.skipif(HAS_TRT, reason="checks the behaviour where TensorRT is absent")


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.fixture
def tiny_ckpt(tmp_path):
    tiny_hf_model("qwen2").save_pretrained(tmp_path / "hf")
    convert(open_model(tmp_path / "hf"), tmp_path / "ck", dtype="float16", progress=False)
    return tmp_path / "ck"


@no_trt
def test_build_from_checkpoint_writes_verified_onnx_and_notice(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["build", "--scheme", "fp16", "--checkpoint", str(tiny_ckpt), "--output",
                 str(out), "--tokens-per-block", "4", "--max-seq-len", "128",
                 "--max-input-len", "64"]) == 0
    cap = capsys.readouterr()
    assert (out / "onnx" / "model.onnx").is_file() and (out / "onnx" / "model.onnx.data").is_file()
    assert not (out / "engine").exists() and not (out / "checkpoint").exists()
    cfg = json.loads((out / "onnx" / "graph_config.json").read_text())
    ver = cfg["extra"]["verification"]
    assert ver["max_rel"] <= ver["tolerance"] == 1e-3 and ver["runner"] == "onnxruntime"
    assert "verify: max rel diff" in cap.err
    assert "notice: no TensorRT engine was built here: the `tensorrt` Python package cannot " \
           "be imported" in cap.out
    assert (f"python -m builder build --onnx {out}/onnx/model.onnx --output {out} "
            f"--max-batch-size 8 --max-input-len 64 --max-seq-len 128") in cap.out


@no_trt
def test_build_atom_checkpoint(tmp_path, capsys):
    import torch

    from converters.quantize import quantize_model
    from converters.schemes import AtomConfig, CalibrationConfig, KVCacheConfig, QuantizeConfig

    tiny_hf_model("llama", hidden_size=128, intermediate_size=192).save_pretrained(tmp_path / "hf")
    cfg = QuantizeConfig(scheme="atom-w4a4", atom=AtomConfig(outliers=16, group_size=32,
                                                             gptq=False),
                         kv=KVCacheConfig(kind="int4", k_group_size=16),
                         calibration=CalibrationConfig(num_samples=4, seq_len=32))
    calib = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_model(open_model(tmp_path / "hf"), tmp_path / "ck", cfg, calib, dtype="float16",
                   progress=False)
    out = tmp_path / "b"
    rc = main(["build", "--scheme", "atom-w4a4", "--checkpoint", str(tmp_path / "ck"),
               "--output", str(out), "--tokens-per-block", "8", "--max-seq-len", "128",
               "--max-input-len", "64"])
    assert rc == 0
    cap = capsys.readouterr()
    ck = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert ck["quantization"]["quant_algo"] == "W4A4_ATOM"
    assert ck["quantization"]["kv_cache_quant_algo"] == "INT4"
    cfg = json.loads((out / "onnx" / "graph_config.json").read_text())
    assert cfg["plugin_ops"] == ["LowbitAtomQuant", "LowbitKv4Attention", "LowbitW4A4Gemm"]
    assert cfg["extra"]["verification"]["max_rel"] <= 1e-5
    assert "notice:" in cap.out and "plugin library" in cap.out


@no_trt
def test_target_tensorrt_without_tensorrt_exits_2(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["build", "--scheme", "fp16", "--checkpoint", str(tiny_ckpt), "--output",
                 str(out), "--target", "tensorrt"]) == 2
    line = _err(capsys)
    assert line.startswith("error: --target tensorrt: the `tensorrt` Python package cannot be "
                           "imported")
    assert not out.exists()  # refused before anything was written


@no_trt
def test_onnx_input_without_tensorrt_exits_2(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["build", "--scheme", "fp16", "--checkpoint", str(tiny_ckpt), "--output",
                 str(out), "--target", "onnx", "--no-verify"]) == 0
    capsys.readouterr()
    assert main(["build", "--onnx", str(out / "onnx" / "model.onnx"), "--output",
                 str(out)]) == 2
    assert "building the engine from --onnx: the `tensorrt` Python package" in _err(capsys)
    assert main(["build", "--onnx", str(out / "onnx" / "model.onnx"), "--output", str(out),
                 "--scheme", "atom-w4a4"]) == 2
    assert "is a fp16 graph, but --scheme atom-w4a4 was requested" in _err(capsys)


def test_missing_plugin_library_is_named(tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOWBIT_PLUGINS_LIB", str(tmp_path / "nope.so"))
    tiny_hf_model("llama").save_pretrained(tmp_path / "hf")
    assert main(["build", "--scheme", "atom-w4a4", "--model", str(tmp_path / "hf"), "--output",
                 str(tmp_path / "b"), "--target", "tensorrt"]) == 2
    line = _err(capsys)
    assert f"LOWBIT_PLUGINS_LIB={tmp_path / 'nope.so'}: expected the TensorRT plugin library" \
        in line
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("case", ["scheme_mismatch", "input_gt_seq", "tokens_lt_batch",
                                  "no_scheme", "not_a_checkpoint"])
def test_bad_input_exits_2_with_one_line(tiny_ckpt, tmp_path, capsys, case):
    out = tmp_path / "b"
    base = ["build", "--checkpoint", str(tiny_ckpt), "--output", str(out)]
    argv, msg = {
        "scheme_mismatch": (base + ["--scheme", "atom-w4a4"],
                            "is fp16 (quant_algo None), but --scheme atom-w4a4 was requested"),
        "input_gt_seq": (base + ["--scheme", "fp16", "--max-input-len", "4096",
                                 "--max-seq-len", "2048"],
                         "--max-input-len 4096 exceeds --max-seq-len 2048"),
        "tokens_lt_batch": (base + ["--scheme", "fp16", "--max-batch-size", "16",
                                    "--max-num-tokens", "8"],
                            "--max-num-tokens 8 is below --max-batch-size 16"),
        "no_scheme": (base, "build needs --scheme"),
        "not_a_checkpoint": (["build", "--checkpoint", str(tmp_path), "--output", str(out),
                              "--scheme", "fp16"], "expected a checkpoint directory"),
    }[case]
    assert main(argv) == 2
    line = _err(capsys)
    assert line.startswith("error: ") and msg in line, line
    assert not out.exists()


def test_unknown_scheme_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--scheme", "w2a2", "--output", str(tmp_path / "b")])
    assert e.value.code == 2
    assert "invalid choice: 'w2a2'" in capsys.readouterr().err


@pytest.mark.slow
@no_trt
def test_smollm2_atom_build_to_onnx_with_notice(tmp_path, capsys):
    """The README's main job on the embedded model (small calibration to keep it short)."""
    out = tmp_path / "b"
    assert main(["build", "--scheme", "atom-w4a4", "--output", str(out), "--num-samples", "4",
                 "--seq-len", "64", "--no-gptq", "--no-weight-clip-search"]) == 0
    cap = capsys.readouterr()
    cfg = json.loads((out / "onnx" / "graph_config.json").read_text())
    assert cfg["extra"]["verification"]["max_rel"] <= 1e-5
    assert (out / "onnx" / "tokenizer.json").is_file()
    assert f"--onnx {out}/onnx/model.onnx --output {out}" in cap.out
