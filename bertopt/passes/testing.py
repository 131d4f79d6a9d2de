"""Helpers for testing a pass on a hand-built graph: build, run one pass, run both on ONNX Runtime.

    model = make_model(nodes, inputs={"x": (np.float32, ["B", "S", 8])}, outputs=["y"], inits={...})
    res = apply_pass(model, gelu, target="onnxruntime")
    assert res.count == 1 and res.ops["com.microsoft::Gelu"] == 1
    np.testing.assert_allclose(*res.compare(feeds), atol=1e-5)

Both models run with ORT's graph optimizations disabled, so ORT's own fusions cannot hide ours.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import onnx
from onnx import helper

from bertopt.graph import op_counts
from bertopt.passes.common import MS_DOMAIN, PassContext, probe_feeds, session, to_model


def make_model(nodes, inputs: dict, outputs: list, inits: dict | None = None, opset: int = 17) -> onnx.ModelProto:
    """``inputs``: name -> (numpy dtype, shape); ``outputs``: names (untyped); ``inits``: name -> array."""
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape) for n, (dt, shape) in inputs.items()]
    outs = [onnx.ValueInfoProto(name=n) for n in outputs]
    init = [onnx.numpy_helper.from_array(np.asarray(v), name=k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "test", vi, outs, init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)], ir_version=8)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = session(model)  # ORT_DISABLE_ALL
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


@dataclass
class PassResult:
    before: onnx.ModelProto
    after: onnx.ModelProto
    count: int
    ctx: PassContext

    @property
    def ops(self) -> Counter:
        return op_counts(self.after)

    @property
    def misses(self) -> dict:
        return dict(self.ctx.misses.get(self.ctx.current, {}))

    def compare(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(all outputs before, all outputs after), flattened and concatenated."""
        a = run(self.before, feeds)
        b = run(self.after, feeds)
        return np.concatenate([x.ravel() for x in a]), np.concatenate([x.ravel() for x in b])


def apply_pass(model: onnx.ModelProto, module: ModuleType, target: str = "onnxruntime", info: dict | None = None) -> PassResult:
    """Run one pass (after shape inference, as the pipeline does) and clean up."""
    import onnx_graphsurgeon as gs

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = gs.import_onnx(inferred)
    ctx = PassContext(target=target, ir_version=model.ir_version, feeds=probe_feeds(graph), current=module.NAME)
    ctx.info.update(info or {})
    count = module.run(graph, ctx)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return PassResult(model, to_model(graph, model.ir_version), int(count), ctx)
