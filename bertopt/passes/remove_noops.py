"""Clean-up 2: remove Identity/Dropout, no-op Cast/Reshape/Transpose, and collapse Reshape/Transpose chains.

Fires = nodes removed or merged. A no-op that writes a graph output is kept when removing it
would rename the output.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from bertopt.passes.common import PassContext, bypass, const_value, producer, single_use

NAME = "remove_noops"
FAMILY = "cleanup"


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, (int, str)) and d not in ("", -1) for d in shape)


def run(graph: gs.Graph, ctx: PassContext) -> int:
    count = 0
    for node in list(graph.nodes):
        if not node.outputs or not node.inputs:
            continue
        x, y = node.inputs[0], node.outputs[0]
        op = node.op
        if op == "Identity" or (op == "Dropout" and len(node.inputs) < 3 and not _used(node.outputs[1:])):
            count += bypass(graph, node)
        elif op == "Cast":
            to = node.attrs.get("to")
            if x.dtype is not None and to is not None and _np_dtype(to) == np.dtype(x.dtype):
                count += bypass(graph, node)
        elif op == "Transpose":
            perm = list(node.attrs.get("perm", []))
            if perm and perm == sorted(perm):
                count += bypass(graph, node)
                continue
            p = producer(x)
            if p is not None and p.op == "Transpose" and single_use(graph, x) and p.attrs.get("perm"):
                inner = list(p.attrs["perm"])
                node.attrs["perm"] = [inner[i] for i in perm]
                node.inputs[0] = p.inputs[0]
                count += 1
                if node.attrs["perm"] == sorted(node.attrs["perm"]):
                    bypass(graph, node)
        elif op == "Reshape":
            if _known(x.shape) and _known(y.shape) and list(x.shape) == list(y.shape):
                count += bypass(graph, node)
                continue
            p = producer(x)
            target = const_value(node.inputs[1])
            # Reshape(Reshape(x, a), b) == Reshape(x, b) unless b copies dims (0) from the middle tensor.
            zero_copy = node.attrs.get("allowzero", 0) == 0 and (target is None or (target == 0).any())
            if p is not None and p.op == "Reshape" and single_use(graph, x) and not zero_copy:
                node.inputs[0] = p.inputs[0]
                count += 1
    if count == 0:
        ctx.miss("no Identity, Dropout, no-op Cast/Reshape/Transpose or Reshape/Transpose chain")
    return count


def _used(ts) -> bool:
    return any(len(t.outputs) for t in ts)


def _np_dtype(to: int) -> np.dtype:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(to)))
