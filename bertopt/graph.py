"""ONNX graph facts and ONNX Runtime graph helpers, one home each (on ``onnx.ModelProto``).

The passes work on onnx-graphsurgeon graphs and have their own helpers (:mod:`bertopt.passes.common`);
everything that reads a ``ModelProto`` or a model file comes from here: op counts (one key format),
the opset, constants, the precision a graph is in, ORT's offline optimization and the integer kernels
ORT turns a Q/DQ graph into.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from bertopt.errors import BertoptError, clip

MS_DOMAIN = "com.microsoft"
QMAX = 127  # INT8 narrow symmetric range (TensorRT's): scale = amax / QMAX
# Float GEMMs, and the ops that run a GEMM in integer arithmetic (ORT's integer and fused quantized ops).
GEMM_OPS = ("MatMul", "Gemm")
INT8_GEMM_OPS = frozenset({"MatMulInteger", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention", "MatMulNBits"})

# Ops that make a graph INT8 (Q/DQ, ORT's integer and fused quantized contrib ops).
INT8_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention", "QGemm", "QLinearAdd", "QLinearMul",
    "ConvInteger", "QLinearConv", "QEmbedLayerNormalization",
})

# ORT's integer GEMM kernels, keyed as :func:`op_counts` keys them.
INT8_KERNELS = (f"{MS_DOMAIN}::MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", f"{MS_DOMAIN}::DynamicQuantizeMatMul",
                f"{MS_DOMAIN}::QGemm", f"{MS_DOMAIN}::QAttention")
# What :func:`ort_kernel_counts` reports: the integer kernels, the Q/DQ nodes left over and the float GEMMs.
KERNEL_OPS = INT8_KERNELS + ("QuantizeLinear", "DequantizeLinear", "MatMul", "Gemm", f"{MS_DOMAIN}::FusedMatMul")
# The offline level ``bertopt build`` writes by default and the kernel counts are taken at: portable
# (ORT_ENABLE_ALL adds CPU-specific layouts, and nothing to the integer GEMMs).
PORTABLE_LEVEL = "ORT_ENABLE_EXTENDED"


def load(model_or_path: Any):
    """A ``ModelProto`` as it is, or the graph of a model file (without external weights)."""
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    return onnx.load(str(model_or_path), load_external_data=False)


def op_key(node) -> str:
    """``Op`` for the default domain, ``domain::Op`` for others (``com.microsoft::MultiHeadAttention``)."""
    return (f"{node.domain}::" if node.domain not in ("", "ai.onnx") else "") + node.op_type


def op_counts(model_or_path: Any) -> Counter:
    """How many nodes of each op the graph holds, keyed by :func:`op_key`, sorted by key (0 for an op it lacks)."""
    return Counter(dict(sorted(Counter(op_key(n) for n in load(model_or_path).graph.node).items())))


def opset_version(model, domain: str = "") -> int:
    """The model's opset for ``domain`` ('' is ai.onnx), 0 when it imports none."""
    for o in model.opset_import:
        if (o.domain or "") == domain or (domain == "" and o.domain == "ai.onnx"):
            return int(o.version)
    return 0


def constants(graph) -> dict:
    """name -> TensorProto for initializers and Constant nodes' ``value`` tensors."""
    consts = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    return consts


def constant_values(graph) -> Callable[[str], Any]:
    """A lookup: tensor name -> its numpy value when it is a constant (:func:`constants`), else None."""
    from onnx import numpy_helper

    consts = constants(graph)

    def value(name: str):
        t = consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    return value


def attr(node, name: str, default=None):
    """A node attribute's value, ``default`` when the node does not set it."""
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def set_attr(node, name: str, value) -> None:
    import onnx

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(onnx.helper.make_attribute(name, value))


class FreshNames:
    """Names not used yet in graph ``g`` (initializers, node outputs, inputs), for the tensors and nodes a
    rewrite adds: ``fresh("x/scale")`` -> ``x/scale``, then ``x/scale_2``, ..."""

    def __init__(self, g):
        self.taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def drop_unused_initializers(model) -> None:
    """Remove the initializers no node (nor a subgraph, nor a graph output) reads, in place.

    On the proto, not through onnx_ir's RemoveUnusedNodesPass: calibrate and build write their models
    through here, and an onnx_ir round trip re-serializes them (same graph, other bytes)."""
    import onnx

    used = {i for n in model.graph.node for i in n.input}
    used |= {o.name for o in model.graph.output}
    for n in model.graph.node:  # subgraphs are not expected in these encoders; keep what they read
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {i for m in a.g.node for i in m.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def external_data(path: Path) -> bool:
    """True when the model file keeps (some of) its weights outside the .onnx file."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in load(path).graph.initializer)


def external_data_files(path: Path, model: Any = None, where: str = "") -> list[Path]:
    """The files holding ``path``'s external weights (those that exist). A ``location`` outside the model's
    folder (absolute, ``..``, or a link out of it) is refused before anything there is opened or hashed."""
    path = Path(path)
    model = load(path) if model is None else model
    folder = os.path.realpath(path.parent)
    found: dict[str, Path] = {}
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key != "location" or e.value in found:
                continue
            rel = os.path.normpath(e.value) if e.value else ""
            inside = rel and not os.path.isabs(rel) and rel != ".." and not rel.startswith(".." + os.sep)
            if not inside or os.path.commonpath([folder, os.path.realpath(path.parent / rel)]) != folder:
                raise BertoptError(f"{path}: initializer '{clip(t.name, 80)}' keeps its data at location '{clip(e.value, 120)}', "
                                   f"outside the model's folder{where}; refusing to read it",
                                   hint="external data must be a file beside the model (re-export it, or fix the location)")
            found[e.value] = path.parent / rel
    return [f for _, f in sorted(found.items()) if f.is_file()]


def precision(model_or_path: Any) -> str:
    """'int8' when the graph holds Q/DQ or integer ops, 'fp16' when most of its weights are half, else 'fp32'."""
    import onnx

    m = load(model_or_path)
    if {n.op_type for n in m.graph.node} & INT8_OPS:
        return "int8"
    f16 = sum(1 for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    f32 = sum(1 for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    return "fp16" if f16 > f32 else "fp32"



def ort_session(model: Any, level: str = "ORT_DISABLE_ALL", threads: int | None = None, spinning: bool = True,
                config: dict[str, str] | None = None, optimized_model: Path | None = None):
    """An ONNX Runtime CPU session on a model file or a ``ModelProto``, at optimization ``level``
    (``ORT_DISABLE_ALL`` by default: bertopt's own graphs must stand alone). ``spinning=False`` for
    sessions timed in turn (idle spinning threads steal the cores); ``config``: session config entries;
    ``optimized_model``: where ORT writes the graph it optimized. The builder every stage uses; only a
    build artifact's session (:func:`bertopt.backends.onnxruntime.make_session`) adds its tuning."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.log_severity_level = 3  # the NCHWc "same machine only" warning: build records the decision itself
    if threads:
        so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    if optimized_model is not None:
        so.optimized_model_filepath = str(optimized_model)
    cpu = ["CPUExecutionProvider"]
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), so, providers=cpu)
    if model.ByteSize() < 1_800_000_000:
        return ort.InferenceSession(model.SerializeToString(), so, providers=cpu)
    tmp = Path(tempfile.mkdtemp(prefix="bertopt-probe-"))  # over protobuf's 2 GB: through a file
    onnx.save_model(model, str(tmp / "m.onnx"), save_as_external_data=True, location="m.onnx.data")
    return ort.InferenceSession(str(tmp / "m.onnx"), so, providers=cpu)


def ort_optimize(src: Path, dst: Path, level: str) -> None:
    """Run ORT's graph optimizer once at ``level`` (``ORT_ENABLE_EXTENDED`` ...) and save the graph to
    ``dst``; models with external weights keep them in ``dst.name + '.data'``."""
    config = {}
    if external_data(src):
        config = {"session.optimized_model_external_initializers_file_name": Path(dst).name + ".data",
                  "session.optimized_model_external_initializers_min_size_in_bytes": "1024"}
    ort_session(src, level, config=config, optimized_model=dst)


@contextlib.contextmanager
def ort_refusal(path: Path, dst: Path | None = None, what: str = "the input model"):
    """ONNX Runtime refusing to load ``path`` (an unknown op, a type error, a shape it cannot infer), or
    failing to save the optimized graph to ``dst`` (a full disk: ORT reports only "Protobuf
    serialization failed"), as a user error naming the file."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - onnxruntime's pybind exceptions (Fail, InvalidGraph, ...) share no public base
        if type(e).__module__.split(".")[0] != "onnxruntime":
            raise
        msg = " ".join(str(e).split())
        if dst is not None and "serialization failed" in msg.lower():
            raise _write_failure(Path(dst), path) from None
        msg = msg.split("failed:", 1)[-1][:300]
        raise BertoptError(f"{path}: ONNX Runtime cannot load {what} ({type(e).__name__}: {msg})",
                           hint="re-run the stage that wrote it, or re-export the model; `bertopt inspect` shows its graph") from None


def _write_failure(dst: Path, src: Path) -> BertoptError:
    """ORT could not write ``dst`` and does not say why: a disk with less room left than the model
    needs is a full disk; anything else is said as what it is."""
    import errno
    import shutil

    from bertopt.artifacts import os_error, user_path

    try:
        full = shutil.disk_usage(dst.parent).free < Path(src).stat().st_size
    except OSError:
        full = False
    if full:
        return os_error(user_path(dst), "write the optimized model", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return BertoptError(f"{user_path(dst)}: ONNX Runtime could not write the optimized model (Protobuf serialization failed)",
                        hint="check the free space and file size limits (ulimit -f) of that disk, or write elsewhere with -o")


def ort_kernel_counts(model_path: Path, level: str = PORTABLE_LEVEL) -> dict[str, int]:
    """The :data:`KERNEL_OPS` counts of the graph ORT runs (CPU, optimized offline at ``level``): whether
    the quantized GEMMs became integer kernels, how many Q/DQ nodes stayed, the GEMMs left in float."""
    with tempfile.TemporaryDirectory() as d:
        ort_optimize(Path(model_path), Path(d) / "opt.onnx", level)
        ops = op_counts(Path(d) / "opt.onnx")
    return {k: v for k, v in ops.items() if k in KERNEL_OPS}


def int8_gemms(kernel_counts: dict[str, int]) -> int:
    """How many integer GEMM kernels :func:`ort_kernel_counts` found."""
    return sum(kernel_counts.get(k, 0) for k in INT8_KERNELS)
