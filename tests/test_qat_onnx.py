"""QAT's Q/DQ export pieces on a small torch model: weight folding is exact, ranges round-trip.

A two-layer MLP fake-quantized by modelopt with the QAT placement, exported through the legacy
exporter; the folded graph must compute exactly what modelopt's own Q/DQ graph computes (ONNX Runtime
with its optimizations off), hold int8 weights, and give back modelopt's ranges when read as a
``--init-from`` source.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization")


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(24, 48)
        self.fc2 = torch.nn.Linear(48, 16)
        self.classifier = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.fc2(torch.nn.functional.gelu(self.fc1(x))))


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    import modelopt.torch.quantization as mtq

    from bertopt.qat import onnx_qdq, placement

    torch.manual_seed(0)
    fp32 = MLP().eval()
    x = torch.randn(8, 8, 24) * 2  # [batch, tokens, features] like an encoder: Linear exports as MatMul
    q = mtq.quantize(copy.deepcopy(fp32), placement.quant_config(["classifier"]), forward_loop=lambda m: m(x))
    with torch.no_grad():  # push a few weights past their channel's amax: the narrow range must clip them
        q.fc1.weight[0, :3] = q.fc1.weight_quantizer.amax[0, 0] * torch.tensor([-1.6, 1.4, -3.0])
    d = tmp_path_factory.mktemp("qdq")
    raw = d / "raw.onnx"
    onnx_qdq.export_qdq(q.eval(), (x[:2],), raw, ["x"], ["y"], {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}, 17)
    post = d / "post.onnx"
    post.write_bytes(raw.read_bytes())
    counts = onnx_qdq.postprocess(post)
    return {"fp32": fp32, "q": q, "x": x, "raw": raw, "post": post, "counts": counts}


def _run(path, x):
    from bertopt.backends.onnxruntime import make_session

    return make_session(path, optimize=False).run(None, {"x": x.numpy()})[0]


def test_folded_graph_is_exact_and_int8(quantized):
    x, q = quantized["x"], quantized["q"]
    assert quantized["counts"]["weights_folded"] == 2  # fc1, fc2; the classifier stays float
    post = _run(quantized["post"], x)
    with torch.no_grad():
        ref = q(x).numpy()
    # the folded graph is modelopt's narrow-range fake quant, bit for bit up to float summation order
    assert np.abs(post - ref).max() < 1e-4
    g = onnx.load(str(quantized["post"])).graph
    inits = {i.name: i for i in g.initializer}
    dq_weights = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(dq_weights) == 2
    for n in dq_weights:
        w = onnx.numpy_helper.to_array(inits[n.input[0]])
        assert w.dtype == np.int8 and w.min() >= -127
        assert [a.i for a in n.attribute if a.name == "axis"] == [1]  # output channel of the [in, out] MatMul weight
    fc1 = [onnx.numpy_helper.to_array(inits[n.input[0]]) for n in dq_weights if onnx.numpy_helper.to_array(inits[n.input[0]]).shape == (24, 48)][0]
    assert fc1[0, 0] == -127 and fc1[1, 0] == 127 and fc1[2, 0] == -127  # clipped to the narrow range
    assert not any(n.op_type == "Transpose" for n in g.node)
    # every quantized GEMM input: QuantizeLinear -> DequantizeLinear; the classifier's MatMul reads float
    prod = {o: n for n in g.node for o in n.output}
    mms = [n for n in g.node if n.op_type in ("MatMul", "Gemm")]
    fed = [all(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input[:2]) for n in mms]
    assert sorted(fed) == [False, True, True]


def test_ort_runs_int8_kernels(quantized):
    from bertopt.graph import int8_gemms, ort_kernel_counts

    assert int8_gemms(ort_kernel_counts(quantized["post"])) == 2


def test_ranges_round_trip(quantized):
    """Reading the Q/DQ model back (as --init-from does) gives modelopt's ranges, matched by weight value."""
    from bertopt.qat.ranges import match_ranges

    q = quantized["q"]
    with torch.no_grad():
        fp = copy.deepcopy(quantized["fp32"])
        fp.fc1.weight.copy_(q.fc1.weight)
    r = match_ranges(quantized["post"], fp)
    assert set(r.linears) == {"fc1", "fc2"} and not r.unmatched_gemms
    for name in ("fc1", "fc2"):
        mod = getattr(q, name)
        gm = r.linears[name]
        assert abs(gm.act_scale * 127 - float(mod.input_quantizer.amax)) < 1e-4 * float(mod.input_quantizer.amax)
        np.testing.assert_allclose(gm.weight_scale * 127, mod.weight_quantizer.amax.reshape(-1).numpy(), rtol=1e-5)
        assert gm.pre_mul is None and gm.bias is not None  # no equalization in front; the bias Add found


def test_ranges_refuse_another_model(quantized):
    from bertopt.errors import BertoptError
    from bertopt.qat.ranges import match_ranges

    torch.manual_seed(1)
    with pytest.raises(BertoptError, match="0 of its 2 quantized GEMMs hold this model"):
        match_ranges(quantized["post"], MLP())
