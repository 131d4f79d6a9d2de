"""ONNX rewrites of ORT's offline-optimized graph, both exact: the biases of its INT8 GEMMs go into the
kernels (:func:`fold_int8_gemm_bias`), and INT8 GEMMs that read one quantized input become one
(:func:`merge_int8_gemms_sharing_input`). ``build_onnxruntime`` runs them after ORT's optimizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bertopt.graph import MS_DOMAIN, drop_unused_initializers, external_data, opset_version


def fold_int8_gemm_bias(path: Path) -> int:
    """``Add(MatMulIntegerToFloat(...), constant bias)`` -> the bias input of ``MatMulIntegerToFloat``.

    ORT's Q/DQ fusion turns each INT8 GEMM into ``MatMulIntegerToFloat`` but leaves the bias as a
    separate ``Add``, one more pass over the output; the kernel adds a bias in its output stage for
    free. Exact (same float additions). Rewrites ``path`` in place; returns how many were folded.
    Models with external weights are left alone.
    """
    import onnx
    if external_data(path):
        return 0
    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    dead: set[int] = set()
    for n in g.node:
        if n.op_type != "MatMulIntegerToFloat" or n.domain != MS_DOMAIN:
            continue
        while _fold_one_bias(n, readers, inits, graph_outputs, g, dead):  # a bias, then maybe a correction of it
            pass
    if not dead:
        return 0
    keep = [n for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(m)
    onnx.save(m, str(path))
    return len({n.output[0] for n in g.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) > 6 and n.input[6]})


def _fold_one_bias(n, readers: dict, inits: dict, graph_outputs: set, g, dead: set) -> bool:
    """Fold the one constant ``Add`` reading ``n``'s output into ``n``'s bias input; False if there is none."""
    from onnx import numpy_helper

    r = readers.get(n.output[0], [])
    if len(r) != 1 or n.output[0] in graph_outputs or r[0].op_type != "Add" or r[0].domain not in ("", "ai.onnx"):
        return False
    add = r[0]
    other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
    if other not in inits or other == n.output[0]:
        return False
    b = numpy_helper.to_array(inits[other])
    if b.dtype != np.float32 or b.ndim < 1 or b.size != b.shape[-1]:
        return False
    b = b.reshape(-1)
    if len(n.input) > 6 and n.input[6]:
        if n.input[6] not in inits:
            return False
        b = numpy_helper.to_array(inits[n.input[6]]).reshape(-1) + b
    name = f"{add.output[0]}/gemm_bias"
    inits[name] = numpy_helper.from_array(b.astype(np.float32), name)
    g.initializer.append(inits[name])
    ins = list(n.input) + [""] * (7 - len(n.input))
    ins[6] = name
    del n.input[:]
    n.input.extend(ins)
    n.output[0] = add.output[0]
    dead.add(id(add))
    return True


class _Consts:
    """The graph's initializers as numpy arrays (converted once) and hashable keys of inputs."""

    def __init__(self, g):
        self.inits = {i.name: i for i in g.initializer}
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name not in self.inits:
            return None
        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name])
        return self.arrays[name]

    def key(self, name: str):
        """The value of a constant input (equal constants give equal keys); the name of any other input."""
        v = self.get(name)
        return (name,) if v is None else (str(v.dtype), v.shape, v.tobytes())


def _share_quantizers(nodes_in_order: list, consts: _Consts, graph_outputs: set, dead: set) -> int:
    """Identical ``QuantizeLinear`` of one tensor become the first of them; returns how many went."""
    rename: dict[str, str] = {}
    first: dict[tuple, Any] = {}
    before = len(dead)
    for n in nodes_in_order:
        if n.op_type != "QuantizeLinear" or n.domain not in ("", "ai.onnx") or n.output[0] in graph_outputs:
            continue
        k = (n.input[0], *(consts.key(i) for i in n.input[1:]), tuple(sorted(a.SerializeToString() for a in n.attribute)))
        if k in first:
            rename[n.output[0]] = first[k].output[0]
            dead.add(id(n))
        else:
            first[k] = n
    for n in nodes_in_order:
        for j, i in enumerate(n.input):
            if i in rename:
                n.input[j] = rename[i]
    return len(dead) - before


def _gemms_sharing_input(nodes_in_order: list, consts: _Consts, graph_outputs: set, dead: set) -> list[list]:
    """``MatMulIntegerToFloat`` nodes with constant 2-D weights, grouped by input, scale, zero point, dtype, rows."""
    groups: dict[tuple, list] = {}
    for n in nodes_in_order:
        if n.op_type != "MatMulIntegerToFloat" or n.domain != MS_DOMAIN or id(n) in dead:
            continue
        ins = list(n.input) + [""] * (7 - len(n.input))
        w = consts.get(ins[1])
        if w is None or w.ndim != 2 or any(ins[j] and consts.get(ins[j]) is None for j in (3, 5, 6)) or n.output[0] in graph_outputs:
            continue
        groups.setdefault((ins[0], consts.key(ins[2]), consts.key(ins[4]) if ins[4] else None, str(w.dtype), w.shape[0]), []).append(n)
    return [nodes for nodes in groups.values() if len(nodes) >= 2]


def _merge_gemms(nodes: list, consts: _Consts, g) -> list:
    """One ``MatMulIntegerToFloat`` over the concatenated weights + a ``Split`` into ``nodes``' outputs.

    Adds the concatenated initializers to ``g``; returns the two new nodes.
    """
    from onnx import helper, numpy_helper

    ins = [list(n.input) + [""] * (7 - len(n.input)) for n in nodes]
    ws = [consts.get(i[1]) for i in ins]
    cols = [w.shape[1] for w in ws]

    def cat(idx: int, fill, dtype):
        return np.concatenate([np.broadcast_to(consts.get(i[idx]).reshape(-1), (c,)) if i[idx] else np.full(c, fill, dtype)
                               for i, c in zip(ins, cols)]).astype(dtype)

    base = nodes[0].name or nodes[0].output[0]
    new = {
        f"{base}/merged/B": np.concatenate(ws, axis=1),
        f"{base}/merged/b_scale": cat(3, 1.0, np.float32),
        f"{base}/merged/b_zero_point": cat(5, 0, ws[0].dtype),
        f"{base}/merged/split": np.asarray(cols, np.int64),
    }
    if any(i[6] for i in ins):
        new[f"{base}/merged/bias"] = cat(6, 0.0, np.float32)
    for name, v in new.items():
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(v), name))
    mm = helper.make_node("MatMulIntegerToFloat", [ins[0][0], f"{base}/merged/B", ins[0][2], f"{base}/merged/b_scale", ins[0][4],
                                                   f"{base}/merged/b_zero_point", f"{base}/merged/bias" if any(i[6] for i in ins) else ""],
                          [f"{base}/merged/out"], name=f"{base}/merged", domain=MS_DOMAIN)
    split = helper.make_node("Split", [f"{base}/merged/out", f"{base}/merged/split"], [n.output[0] for n in nodes], name=f"{base}/merged/Split", axis=-1)
    return [mm, split]


def merge_int8_gemms_sharing_input(path: Path) -> dict[str, int]:
    """Fewer kernels for the same arithmetic: INT8 GEMMs that read one quantized input become one GEMM.

    ORT's Q/DQ fusion gives Q, K and V each their own ``QuantizeLinear`` of the same tensor (same scale
    and zero point) and their own ``MatMulIntegerToFloat``. Identical quantizers become one, and the
    GEMMs that then share an input, a scale and a zero point become one ``MatMulIntegerToFloat`` over
    the concatenated weights (per-column scales, zero points and biases concatenated alike) followed
    by a ``Split`` into the original outputs. Exact (every output column is computed as before). Each
    kernel is one more hand-off to the intra-op threads, which costs most on small models at batch 1
    with spinning off. Rewrites ``path`` in place; models with external weights are left alone.
    Returns ``{"quantizers_shared": .., "gemms_merged": ..}`` (GEMMs removed).
    """
    import onnx

    done = {"quantizers_shared": 0, "gemms_merged": 0}
    if external_data(path):
        return done
    m = onnx.load(str(path))
    g = m.graph
    if opset_version(m) < 13:  # Split takes sizes as an input from 13
        return done
    consts = _Consts(g)
    graph_outputs = {o.name for o in g.output}
    nodes_in_order = list(g.node)  # one wrapper per node for the whole rewrite: the id()s below stay valid
    dead: set[int] = set()
    done["quantizers_shared"] = _share_quantizers(nodes_in_order, consts, graph_outputs, dead)
    replace: dict[int, list] = {}
    for nodes in _gemms_sharing_input(nodes_in_order, consts, graph_outputs, dead):
        replace[id(nodes[0])] = _merge_gemms(nodes, consts, g)  # where the first one was: its inputs exist by then, its readers come later
        dead |= {id(n) for n in nodes}
        done["gemms_merged"] += len(nodes) - 1
    if not dead:
        return done

    keep = []
    for n in nodes_in_order:
        keep += replace.get(id(n), [] if id(n) in dead else [n])
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(m)
    onnx.save(m, str(path))
    return done
