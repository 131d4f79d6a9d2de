"""bertopt.graph (one home for op counts, opset, constants, precision, ORT's kernels) and the
per-architecture head facts in bertopt.models that export and qat share."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bertopt import graph
from bertopt.errors import BertoptError
from bertopt.models import dynamic_axes, output_names, resolve_head, resolve_task
from bertopt.passes.testing import make_model


def _tiny(dtype=np.float32):
    w = np.arange(12, dtype=dtype).reshape(4, 3)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array([2.0], dtype=dtype))),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "c"], ["m"]),
        helper.make_node("Gelu", ["m"], ["y"], domain=graph.MS_DOMAIN),
    ]
    return make_model(nodes, inputs={"x": (dtype, ["B", 4])}, outputs=["y"], inits={"w": w}, opset=17)


def test_op_counts_key_other_domains_with_double_colon(tmp_path):
    m = _tiny()
    assert graph.op_counts(m) == {"Constant": 1, "MatMul": 1, "Mul": 1, "com.microsoft::Gelu": 1}
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    assert graph.op_counts(p) == graph.op_counts(m)  # a path reads the same graph


def test_opset_constants_attrs():
    m = _tiny()
    assert graph.opset_version(m) == 17 and graph.opset_version(m, graph.MS_DOMAIN) == 1 and graph.opset_version(m, "ai.onnx.ml") == 0
    value = graph.constant_values(m.graph)
    assert value("c").tolist() == [2.0] and value("w").shape == (4, 3) and value("x") is None and value("h") is None
    n = m.graph.node[1]
    graph.set_attr(n, "alpha", 0.5)
    graph.set_attr(n, "alpha", 0.25)  # replaced, not added twice
    assert graph.attr(n, "alpha") == 0.25 and graph.attr(n, "beta", 1.0) == 1.0 and len(n.attribute) == 1


def test_precision_one_rule():
    assert graph.precision(_tiny()) == "fp32"
    assert graph.precision(_tiny(np.float16)) == "fp16"
    q = _tiny()
    q.graph.node.append(helper.make_node("QuantizeLinear", ["y", "s"], ["yq"]))
    assert graph.precision(q) == "int8"


def test_drop_unused_initializers_keeps_graph_outputs():
    m = _tiny()
    m.graph.initializer.extend([numpy_helper.from_array(np.zeros(2, np.float32), "dead"), numpy_helper.from_array(np.ones(2, np.float32), "out")])
    m.graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, [2]))
    graph.drop_unused_initializers(m)
    assert sorted(i.name for i in m.graph.initializer) == ["out", "w"]


def test_ort_kernel_counts_on_a_qdq_gemm(tmp_path):
    """The one counter calibrate and qat use: a Q/DQ GEMM becomes an integer kernel at the portable level."""
    x_s, w_s = np.float32(0.05), np.full(3, 0.1, np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    m = make_model(nodes, inputs={"x": (np.float32, ["B", 4])}, outputs=["y"],
                   inits={"xs": x_s, "zp": np.int8(0), "wq": np.ones((4, 3), np.int8), "ws": w_s, "wzp": np.zeros(3, np.int8)})
    p = tmp_path / "q.onnx"
    p.write_bytes(m.SerializeToString())
    k = graph.ort_kernel_counts(p)
    assert graph.int8_gemms(k) == 1 and "MatMul" not in k, k
    assert set(k) <= set(graph.KERNEL_OPS)


def test_head_resolution(minilm_dir, tmp_path):
    cls_cfg = {"architectures": ["BertForSequenceClassification"]}
    assert resolve_task(cls_cfg) == "sequence-classification" and resolve_task({}) == "feature-extraction"
    assert resolve_task(cls_cfg, known={"task": "feature-extraction"}) == "feature-extraction"  # an export artifact's task wins
    assert resolve_task(cls_cfg, "feature-extraction", known={"task": "sequence-classification"}) == "feature-extraction"
    with pytest.raises(BertoptError, match="unknown task 'qa'"):
        resolve_task({}, "qa")
    # all-MiniLM-L6-v2 is a sentence-transformers model: mean pooling, normalized
    assert resolve_head(minilm_dir, "feature-extraction") == ("mean", True)
    assert resolve_head(minilm_dir, "feature-extraction", "cls", False) == ("cls", False)
    assert resolve_head(minilm_dir, "feature-extraction", known={"pooling": "cls", "normalize": False}) == ("cls", False)
    assert resolve_head(minilm_dir, "sequence-classification", "mean") == ("none", False)  # a classifier has logits, not a pooled output
    with pytest.raises(BertoptError, match="unknown pooling 'sum'"):
        resolve_head(minilm_dir, "feature-extraction", "sum")
    # max pooling is not exported (it used to come out as mean pooling without a word)
    odd = tmp_path / "maxpool"
    shutil.copytree(minilm_dir, odd, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    (odd / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(BertoptError, match="pooling is 'max'") as e:
        resolve_head(odd, "feature-extraction")
    assert "--pooling" in e.value.hint
    assert output_names("feature-extraction", "mean") == ["last_hidden_state", "sentence_embedding"]
    axes = dynamic_axes(("input_ids", "attention_mask"), ["last_hidden_state", "sentence_embedding"])
    assert axes["input_ids"] == {0: "batch", 1: "sequence"} and axes["sentence_embedding"] == {0: "batch"}
