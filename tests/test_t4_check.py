"""`make t4-check` (benchmarks/t4_check.py): its CPU half on the real MiniLM here, with the GPU part
written as skipped (no TensorRT / GPU on this machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("t4_check", ROOT / "benchmarks" / "t4_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_t4_check_cpu_half_writes_one_json(exported_minilm, tmp_path, capsys):
    t4 = _script()
    out = tmp_path / "t4.json"
    assert t4.main(["--workdir", str(tmp_path / "w"), "--out", str(out), "--export", str(exported_minilm), "--samples", "16"]) == 0
    rep = json.loads(out.read_text())
    skipped = rep["gpu"]["skipped"]
    assert "tensorrt" in skipped.lower() or "cuda" in skipped.lower()  # the real reason, not a flag
    assert "skipped" in capsys.readouterr().out
    cpu = rep["cpu"]
    assert cpu["calibration_samples"] == 16 and Path(cpu["artifacts"]["int8"], "model.onnx").is_file()
    assert cpu["int8"]["quantized_gemms"] == 36  # 6 layers x (Q, K, V, out, FFN in, FFN out)
    for p in ("fp16", "int8"):
        conv = cpu[p]["fp16_conversion"]
        assert conv["kept_fp32_nodes"] == {"LayerNormalization": 13, "Softmax": 6} and conv["qdq_scales_clamped"] == 0
    assert cpu["int8"]["fp16_conversion"]["opset_to"] == 19
    assert rep["batches"] == [1, 2, 4, 8, 16, 32, 64, 128] and rep["versions"]["polygraphy"] and rep["versions"]["onnxruntime"]
    assert not list(tmp_path.glob("*.tmp"))


def test_comparator_path_on_onnx_runtime(exported_minilm, tmp_path):
    """The comparison t4-check runs against TensorRT, exercised with the real Polygraphy Comparator on two
    ONNX Runtime runners: the FP16-converted MiniLM (what the FP16 engine is built from) vs FP32."""
    import onnx
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from bertopt.backends.fp16 import convert_to_fp16

    t4 = _script()
    m16, _ = convert_to_fp16(onnx.load(str(exported_minilm / "model.onnx")))
    feeds = t4.eval_feeds(exported_minilm / "tokenizer", 4, 2)
    assert len(feeds) == 2 and feeds[0]["input_ids"].shape == (4, t4.SEQ)
    res = t4.compare_runners(OnnxrtRunner(SessionFromOnnx(m16.SerializeToString(), providers=["cpu"])),
                             OnnxrtRunner(SessionFromOnnx(str(exported_minilm / "model.onnx"), providers=["cpu"])), feeds, 2e-2, 2e-2)
    assert res["passed"] and res["batches"] == 2
    assert res["sentence_embedding"]["cos_min"] > 0.999
    strict = t4.compare_runners(OnnxrtRunner(SessionFromOnnx(m16.SerializeToString(), providers=["cpu"])),
                                OnnxrtRunner(SessionFromOnnx(str(exported_minilm / "model.onnx"), providers=["cpu"])), feeds, 1e-7, 0.0)
    assert not strict["passed"]  # FP16 is not bit-exact: the check can fail
