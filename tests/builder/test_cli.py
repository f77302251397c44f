"""python -m builder: the commands end to end, exit code 2 + one line for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from builder.__main__ import main
from tests.conftest import tiny_hf_model


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "builder", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("convert", "run", "eval"):
        assert cmd in out
    out = subprocess.run([sys.executable, "-m", "builder", "convert", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--tp-size" in out and "--force" in out and "--dtype" in out


def test_convert_tiny_model(tmp_path, capsys):
    tiny_hf_model("qwen2").save_pretrained(tmp_path / "hf")
    rc = main(["convert", "--model", str(tmp_path / "hf"), "--output", str(tmp_path / "ck"),
               "--tp-size", "2", "--dtype", "bfloat16"])
    assert rc == 0
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["mapping"]["tp_size"] == 2 and cfg["dtype"] == "bfloat16"
    assert (tmp_path / "ck" / "rank1.safetensors").is_file()


@pytest.mark.parametrize("case", ["missing_model", "unsupported_arch", "non_empty_output",
                                  "bad_tp", "missing_checkpoint"])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, case):
    hf = tmp_path / "hf"
    tiny_hf_model("llama").save_pretrained(hf)
    out = tmp_path / "out"
    if case == "missing_model":
        argv, msg = ["convert", "--model", str(tmp_path / "nope"), "-o", str(out)], "does not exist"
    elif case == "unsupported_arch":
        cfg = json.loads((hf / "config.json").read_text())
        cfg["architectures"] = ["FalconForCausalLM"]
        (hf / "config.json").write_text(json.dumps(cfg))
        argv, msg = ["convert", "--model", str(hf), "-o", str(out)], "supported: LlamaForCausalLM"
    elif case == "non_empty_output":
        out.mkdir()
        (out / "x").write_text("x")
        argv, msg = ["convert", "--model", str(hf), "-o", str(out)], "not empty; pass --force"
    elif case == "bad_tp":
        argv, msg = ["convert", "--model", str(hf), "-o", str(out), "--tp-size", "3"], \
            "does not divide"
    else:
        argv, msg = ["eval", "--checkpoint", str(tmp_path / "nock")], "expected a checkpoint"
    assert main(argv) == 2
    line = _err(capsys)
    assert line.startswith("error: ") and msg in line
    assert "Traceback" not in capsys.readouterr().err
    if case != "non_empty_output":
        assert not out.exists()


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "convert", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])


def test_eval_text_shorter_than_window(smollm2_checkpoint, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    assert main(["eval", "--checkpoint", str(smollm2_checkpoint), "--text-file", str(short)]) == 2
    assert "shorter than one window" in _err(capsys)


def test_eval_report_json_and_plot(smollm2_checkpoint, tmp_path, capsys):
    text = tmp_path / "t.txt"
    from converters.data import evaluation_text

    text.write_text(evaluation_text()[:6000])
    rc = main(["eval", "--checkpoint", str(smollm2_checkpoint), str(smollm2_checkpoint),
               "--text-file", str(text), "--seq-len", "128", "--max-windows", "2",
               "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert rc == 0
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["windows"] == 2 and len(rep["rows"]) == 2
    assert rep["rows"][0]["delta_pct"] is None and abs(rep["rows"][1]["delta_pct"]) < 1e-9
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "perplexity" in capsys.readouterr().err


def test_run_generates_text(smollm2_checkpoint, capsys):
    rc = main(["run", "--checkpoint", str(smollm2_checkpoint), "--prompt",
               "What is the capital of France?", "--max-new-tokens", "12"])
    assert rc == 0
    assert "Paris" in capsys.readouterr().out


def test_convert_atom_and_eval_report_on_smollm2(smollm2_path, tmp_path, capsys):
    """The whole quantized path through the CLI on the real model (small calibration)."""
    out = tmp_path / "atom"
    rc = main(["convert", "--model", str(smollm2_path), "--scheme", "atom-w4a4", "--output",
               str(out), "--num-samples", "4", "--seq-len", "64"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == "W4A4_ATOM"
    assert cfg["quantization"]["kv_cache_quant_algo"] == "INT4"  # atom's default KV cache
    assert cfg["atom"]["group_size"] == 128
    assert cfg["lowbit"]["layers"]["0"]["outliers"] == {"qkv_in": 192, "dense_in": 192,
                                                        "fc_in": 192, "proj_in": 128}
    text = tmp_path / "t.txt"
    from converters.data import evaluation_text

    text.write_text(evaluation_text()[:3000])
    assert main(["eval", "--checkpoint", str(out), "--text-file", str(text), "--seq-len", "128",
                 "--max-windows", "1"]) == 0
    assert "atom-w4a4" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--scheme", "atom-w4a4", "--group-size", "1024"], "leaves no INT4 channels"),
    (["--scheme", "atom-w4a4", "--outliers", "5000"], "larger than the input size"),
    (["--scheme", "smoothquant-w8a8", "--alpha", "1.5"], "--alpha must be in [0, 1]"),
    (["--kv-cache", "int4", "--k-group-size", "48"], "must divide head_size 64"),
    (["--scheme", "smoothquant-w8a8", "--num-samples", "500"], "calibration text has"),
])
def test_quantizer_option_errors(smollm2_path, tmp_path, capsys, argv, msg):
    out = tmp_path / "x"
    assert main(["convert", "--model", str(smollm2_path), "--output", str(out), *argv]) == 2
    assert msg in _err(capsys)
    assert not out.exists()


def test_dataset_without_network_or_package_is_a_clear_error(smollm2_checkpoint, capsys):
    """CI has neither the `datasets` package nor network: either way, exit 2 and say why."""
    assert main(["eval", "--checkpoint", str(smollm2_checkpoint), "--dataset", "wikitext2"]) == 2
    line = _err(capsys)
    assert "datasets" in line or "network" in line
