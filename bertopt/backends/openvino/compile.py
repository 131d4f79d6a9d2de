"""Compile an OpenVINO IR for the CPU (dynamic and per shape bucket) and read back what executes.

The properties are fixed and recorded: ``PERFORMANCE_HINT=LATENCY``, one stream, ``INFERENCE_NUM_THREADS``,
and ``INFERENCE_PRECISION_HINT`` f32 unless another is asked for (OpenVINO's CPU plugin otherwise picks
bf16 by itself on CPUs that have it). The compiled model's runtime graph gives each layer's execution
precision (``runtimePrecision``) and the ONNX nodes it came from (``originalLayersNames``): the INT8
check maps every GEMM the Q/DQ graph quantizes to its layer, as the TensorRT build does with the engine
inspector.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bertopt.backends.openvino import DEVICE
from bertopt.backends.openvino.shapes import Bucket
from bertopt.errors import BertoptError

GEMM_LAYERS = ("FullyConnected", "MatMul", "Convolution", "Gemm")
INT8 = ("i8", "u8")
# read back from each compiled model into the manifest
RECORDED = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT",
            "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def properties(threads: int, inference_precision: str = "f32") -> dict[str, Any]:
    """The compile properties every OpenVINO build and runner use."""
    return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": inference_precision}


def checked_properties(recorded: Any, threads: int | None, source: str) -> dict[str, Any]:
    """The compile properties an artifact's manifest records, accepted only as :func:`properties` writes them
    (an artifact is input from anywhere: OpenVINO properties also set cache folders, devices and any number of
    threads); threads capped at the host's cores, ``threads`` (the caller's) taking precedence."""
    import os

    hint = ("bertopt writes only PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1, INFERENCE_NUM_THREADS and INFERENCE_PRECISION_HINT "
            "(f32, bf16, f16); rebuild the artifact with `bertopt build --backend openvino`")
    if not isinstance(recorded, dict):
        raise BertoptError(f"{source}: build.compile_properties must be an object, got {type(recorded).__name__}", hint=hint)
    base = properties(1)
    for key, value in recorded.items():
        if key not in base:
            raise BertoptError(f"{source}: compile property '{key}' is not one bertopt writes; refusing to pass it to OpenVINO", hint=hint)
    n = recorded.get("INFERENCE_NUM_THREADS", 0)
    prec = recorded.get("INFERENCE_PRECISION_HINT", "f32")
    if (recorded.get("PERFORMANCE_HINT", "LATENCY") != "LATENCY" or recorded.get("NUM_STREAMS", 1) != 1 or prec not in ("f32", "bf16", "f16")
            or isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise BertoptError(f"{source}: build.compile_properties {recorded} are not values bertopt writes; refusing to pass them to OpenVINO",
                           hint=hint)
    from bertopt.backends.onnxruntime import physical_cores

    return properties(threads or min(n or physical_cores(), os.cpu_count() or 1), prec)


def core(cache_dir: Path | None):
    """An ``ov.Core`` that caches compiled blobs in ``cache_dir`` (None: no cache)."""
    import openvino as ov

    c = ov.Core()
    if cache_dir is not None:
        c.set_property({"CACHE_DIR": str(cache_dir)})
    return c


def read_ir(c, xml: Path):
    try:
        return c.read_model(str(xml))
    except RuntimeError as e:
        raise BertoptError(f"{xml}: OpenVINO cannot read this IR ({first_line(e)})",
                           hint="rebuild the artifact with `bertopt build --backend openvino`") from None


def compile_for(c, model, bucket: Bucket | None, props: dict, where: Path):
    """``model`` compiled with dynamic shapes (``bucket`` None) or reshaped to ``bucket`` first."""
    m = model
    if bucket is not None:
        m = model.clone()
        try:
            m.reshape({i.get_any_name(): [bucket.batch, bucket.seq] for i in m.inputs})
        except RuntimeError as e:
            raise BertoptError(f"{where}: OpenVINO cannot reshape the model to {bucket.spec()} ({first_line(e)})",
                               hint="check --shapes against the model's inputs") from None
    try:
        return c.compile_model(m, DEVICE, props)
    except RuntimeError as e:
        raise BertoptError(f"{where}: OpenVINO failed to compile the model for the CPU ({first_line(e)})",
                           hint="build for --backend onnxruntime instead (OpenVINO's CPU plugin may not support this host)") from None


def device_name() -> str:
    import openvino as ov

    try:
        return str(ov.Core().get_property(DEVICE, "FULL_DEVICE_NAME"))
    except RuntimeError:
        return "?"


def read_properties(compiled) -> dict[str, Any]:
    out = {}
    for k in RECORDED:
        try:
            v = compiled.get_property(k)
        except RuntimeError:
            continue
        out[k] = _plain(v)
    return out


# ------------------------------------------------------------------------------------- runtime graph
@dataclass(frozen=True)
class Layer:
    name: str
    layer_type: str
    precision: str  # runtimePrecision: f32, i8, u8, bf16, ...
    sources: tuple[str, ...]  # originalLayersNames: the source (ONNX-derived) op names fused into it


def runtime_layers(compiled) -> list[Layer]:
    def get(info, key: str) -> str:
        return info[key].astype(str) if key in info else ""

    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        srcs = tuple(s for s in get(info, "originalLayersNames").split(",") if s)
        out.append(Layer(op.get_friendly_name(), get(info, "layerType"), get(info, "runtimePrecision"), srcs))
    return out


def layer_precisions(layers: Sequence[Layer]) -> dict[str, dict[str, int]]:
    """layer type -> {precision: count} for the GEMM layers and OpenVINO's fused subgraphs (attention)."""
    counts: dict[str, Counter] = {}
    for la in layers:
        if la.layer_type in GEMM_LAYERS or la.layer_type == "Subgraph":
            counts.setdefault(la.layer_type, Counter())[la.precision] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(counts.items())}


def int8_gemms(layers: Sequence[Layer]) -> int:
    """How many GEMM layers execute in INT8 (the count ONNX Runtime's build reports as integer kernels)."""
    return sum(1 for la in layers if la.layer_type in GEMM_LAYERS and la.precision in INT8)


@dataclass
class Int8Check:
    expected: int
    int8: list[str] = field(default_factory=list)
    fell_back: dict[str, str] = field(default_factory=dict)  # ONNX GEMM -> the precision its layer ran in
    unverified: list[str] = field(default_factory=list)  # found in no layer's sources

    @property
    def ok(self) -> bool:
        return not self.fell_back and (not self.expected or len(self.unverified) < self.expected)

    def to_json(self) -> dict:
        return {"expected": self.expected, "int8": len(self.int8), "fell_back": self.fell_back, "unverified": self.unverified, "ok": self.ok}


def check_int8(layers: Sequence[Layer], expected: Sequence[str]) -> Int8Check:
    """Each ONNX GEMM in ``expected`` (both operands from DequantizeLinear) against the GEMM layer it became."""
    chk = Int8Check(expected=len(expected))
    gemms = [la for la in layers if la.layer_type in GEMM_LAYERS]
    for node in expected:
        hits = [la for la in gemms if any(s == node or s.startswith(node + "/") for s in la.sources)]
        if not hits:
            chk.unverified.append(node)
        elif all(la.precision in INT8 for la in hits):
            chk.int8.append(node)
        else:
            chk.fell_back[node] = "/".join(sorted({la.precision for la in hits}))
    return chk


def float_precisions(layers: Sequence[Layer]) -> list[str]:
    """The reduced float precisions (bf16, f16) any layer executes in."""
    return sorted({la.precision for la in layers if la.precision in ("bf16", "f16")})


def _plain(v: Any) -> Any:
    """A property value as JSON: ov.Type -> 'f32', enums -> their name."""
    if isinstance(v, (int, float, bool, str)):
        return v
    if hasattr(v, "to_string"):
        return v.to_string()
    return getattr(v, "name", None) or str(v)


def first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return (lines[-1] if lines else str(e))[:300]
