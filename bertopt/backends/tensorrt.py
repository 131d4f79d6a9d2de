"""TensorRT backend (GPU hosts): strongly typed engines from Q/DQ or FP16-typed ONNX, TensorRT 10.x and 11.x.

Build and run go through Polygraphy's TensorRT backend (``NetworkFromOnnxPath`` -> ``CreateConfig`` ->
``EngineBytesFromNetwork``; ``EngineFromBytes``; ``TrtRunner``): the GPU code here is wiring, not
hand-written bindings. ``tensorrt`` and ``polygraphy.backend.trt`` are imported inside functions only
(``require_tensorrt``); Polygraphy's loaders import TensorRT lazily themselves, so composing them works
on a machine without it (tested). What can be checked without a GPU is plain Python here: preparing the
ONNX (``prepare_onnx``), the GEMMs a Q/DQ graph quantizes (``expected_int8_gemms``), the Polygraphy
profiles (``polygraphy_profiles``), parsing the inspector's layer JSON (``parse_layer_info``) and the
INT8 check (``check_int8``): no library checks that every quantized GEMM really ran in INT8.

TensorRT 10 vs 11, as used here:
- The network is always created strongly typed (``strongly_typed=True``): required on 10.x for FP16/INT8
  from the ONNX types; on 11.x the STRONGLY_TYPED flag is "retained for API compatibility but is
  ignored" (TensorRT 11.0 Python API, NetworkDefinitionCreationFlag). No precision builder flag is set
  (``CreateConfig(fp16=False, int8=False)``): 10.x rejects them on strongly typed networks and 11.x
  removed them, with implicit INT8 calibration. INT8 comes only from Q/DQ, FP16 only from the ONNX types.
- Inspector JSON: per NVIDIA's "Migrating IEngineInspector Usage from TensorRT 10.x to 11.x" page
  (docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html),
  11.x replaces ``"Bindings"`` with ``"I/O Tensors"`` and splits the ``"Format/DataType"`` field;
  ``tensor_precision`` reads a layer tensor's precision from either form.
- Runtime: name-based I/O in both, through ``TrtRunner``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bertopt.errors import BertoptError, MissingDependencyError
from bertopt.graph import GEMM_OPS

ENGINE_FILE = "engine.plan"
PRECISION_MAP_FILE = "precision_map.json"
PROFILES_FILE = "profiles.json"
INSTALL_HINT = (
    "TensorRT needs an NVIDIA GPU and its Python wheel: on a GPU host `pip install tensorrt` (10.x or 11.x, "
    "matching the CUDA driver) or use an NGC TensorRT container; on this machine use --backend onnxruntime"
)


def default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bertopt" / "trt-timing.cache"


# ===================================================================================== availability
def require_tensorrt():
    """``import tensorrt`` and check for a CUDA device; a user error with an install hint otherwise."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"--backend tensorrt: the tensorrt Python package is not installed ({e})", hint=INSTALL_HINT) from None
    n = cuda_device_count()
    if n < 1:
        raise MissingDependencyError("--backend tensorrt: no CUDA GPU is visible to this process", hint=INSTALL_HINT)
    return trt


def cuda_device_count() -> int:
    """CUDA devices through Polygraphy's CUDA wrapper; 0 when there is no driver/runtime.

    Polygraphy >= 0.53 also looks in the pip ``nvidia-cuda-runtime-cuXX`` wheel's directory
    (``polygraphy/cuda/cuda.py: _cuda_runtime_wheel_dirs``), hence the pin in pyproject.toml.
    """
    import ctypes

    from polygraphy.logger import G_LOGGER

    try:
        from polygraphy.cuda.cuda import wrapper

        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # its "could not find libcudart" warnings: ours to word
            lib = wrapper().handle
        count = ctypes.c_int(0)
        return count.value if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0
    except Exception:  # noqa: BLE001 - no CUDA runtime at all (OSError, PolygraphyException)
        return 0


def tensorrt_available() -> bool:
    try:
        require_tensorrt()
        return True
    except BertoptError:
        return False


# ===================================================================================== ONNX preparation
@dataclass
class Prepared:
    model: Any  # onnx.ModelProto
    precision: str
    expected_int8: list[str]
    fp16: dict | None = None


def prepare_onnx(src: Path, precision: str | None, keep_fp32: Sequence[str]) -> Prepared:
    """The ONNX the engine is built from: precision checked against the graph, FP16 in the types.

    int8 needs Q/DQ (TensorRT 11 has no implicit calibration); its float rest is converted to FP16
    (``keep_fp32`` op types stay FP32). fp16 converts a float graph the same way. fp32 builds as is.
    """
    import onnx

    from bertopt.backends.fp16 import FP16_TINY, convert_to_fp16
    from bertopt.backends.onnxruntime import detect_precision

    model = onnx.load(str(src))
    graph_precision = detect_precision(model)
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise BertoptError(
            f"{src}: TensorRT's ONNX parser cannot read ONNX Runtime contrib ops: {', '.join(foreign[:6])}",
            hint="build TensorRT engines from the export/calibrate/qat artifact, not from a graph fused for ONNX Runtime",
        )
    if precision is None:
        precision = "int8" if graph_precision == "int8" else ("fp16" if graph_precision in ("fp32", "fp16") else graph_precision)
    if precision == "int8" and graph_precision != "int8":
        raise BertoptError(
            f"{src}: --precision int8 needs a Q/DQ graph, but this one is {graph_precision}",
            hint="run `bertopt calibrate` (or qat) first: TensorRT 11 removed implicit INT8 calibration, INT8 comes only from Q/DQ",
        )
    if precision in ("fp16", "fp32") and graph_precision == "int8":
        raise BertoptError(
            f"{src}: this graph is INT8 (it has Q/DQ nodes), but --precision {precision} was asked for",
            hint="use --precision int8, or build fp16/fp32 from the export or fuse artifact",
        )
    if precision == "fp32" and graph_precision == "fp16":
        raise BertoptError(f"{src}: this graph is already FP16", hint="build fp32 from the FP32 export")
    if precision == "int8":
        bad = asymmetric_qdq(model)
        if bad:
            raise BertoptError(
                f"{src}: {len(bad)} Q/DQ node(s) use a non-zero or unsigned zero point (e.g. {', '.join(bad[:3])}); "
                "TensorRT supports only symmetric signed INT8 (zero point 0, int8)",
                hint="calibrate for TensorRT with symmetric INT8 (ONNX Runtime's quantize_static: "
                     "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}, QInt8)",
            )
    expected = expected_int8_gemms(model) if precision == "int8" else []
    if precision == "int8" and not expected:
        raise BertoptError(
            f"{src}: the Q/DQ graph quantizes no MatMul/Gemm (no GEMM has dequantized inputs)",
            hint="calibrate with MatMul/Gemm quantization enabled",
        )
    fp16 = None
    if precision in ("int8", "fp16") and graph_precision != "fp16":
        model, rep = convert_to_fp16(model, keep_fp32=tuple(keep_fp32))
        fp16 = rep.to_json()
        from bertopt.ui import note

        if rep.qdq_scales_clamped:
            note(f"build: {rep.qdq_scales_clamped} Q/DQ scale value(s) would be 0 in FP16 (TensorRT rejects non-positive "
                 f"scales): raised to FP16's smallest normal value {FP16_TINY:.3g}")
        if rep.qdq_scales_subnormal:
            note(f"build: {rep.qdq_scales_subnormal} Q/DQ scale value(s) are below FP16's normal range and lose precision in FP16")
    return Prepared(model=model, precision=precision, expected_int8=expected, fp16=fp16)


def asymmetric_qdq(model) -> list[str]:
    """Q/DQ nodes TensorRT cannot take: a zero point that is not all 0, or not int8 (uint8)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    bad = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3 or not n.input[2]:
            continue
        zp = n.input[2]
        if zp in inits:
            arr, dtype = numpy_helper.to_array(inits[zp]), inits[zp].data_type
        elif zp in consts:
            t = next(a.t for a in consts[zp].attribute if a.name == "value")
            arr, dtype = numpy_helper.to_array(t), t.data_type
        else:
            continue
        if dtype != onnx.TensorProto.INT8 or np.any(arr != 0):
            bad.append(n.name or f"{n.op_type}_{i}")
    return bad


def expected_int8_gemms(model) -> list[str]:
    """Names of the MatMul/Gemm nodes whose both operands come out of DequantizeLinear (possibly
    through a Transpose/Reshape), i.e. the GEMMs TensorRT should run in INT8."""
    producers = {o: n for n in model.graph.node for o in n.output}
    passthrough = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Cast"}

    def from_dq(name: str, depth: int = 0) -> bool:
        n = producers.get(name)
        if n is None or depth > 3:
            return False
        if n.op_type == "DequantizeLinear":
            return True
        return n.op_type in passthrough and bool(n.input) and from_dq(n.input[0], depth + 1)

    out = []
    for i, n in enumerate(model.graph.node):
        if n.op_type in GEMM_OPS and len(n.input) >= 2 and from_dq(n.input[0]) and from_dq(n.input[1]):
            out.append(n.name or f"{n.op_type}_{i}")
    return out


# ===================================================================================== inspector JSON
_DTYPES = (  # (pattern in a TensorRT format/type string, precision), most specific first
    (r"\bbfloat16\b|\bbf16\b", "BF16"),
    (r"\bfp8\b|\bfloat8", "FP8"),
    (r"\bint8\b", "INT8"),
    (r"\buint8\b", "UINT8"),
    (r"\bint4\b", "INT4"),
    (r"\bfp16\b|\bhalf\b", "FP16"),
    (r"\bfp32\b|\bfloat\b", "FP32"),
    (r"\bint32\b", "INT32"),
    (r"\bint64\b", "INT64"),
    (r"\bbool\b", "BOOL"),
)


def tensor_precision(t: dict) -> str:
    """Precision of one tensor record: 11.x ``DataType``, else the 10.x ``Format/Datatype`` string."""
    for text in (t.get("DataType"), t.get("Format/Datatype"), t.get("Format")):
        if not text:
            continue
        s = str(text).lower()
        for pattern, name in _DTYPES:
            if re.search(pattern, s):
                return name
    return "UNKNOWN"


@dataclass
class LayerRecord:
    name: str
    layer_type: str
    parameter_type: str | None
    inputs: list[str]
    outputs: list[str]
    onnx_nodes: list[str]
    tactic: str | None = None

    @property
    def precision(self) -> str:
        """The precision the layer computes in: its first data input's (trex's convention)."""
        return self.inputs[0] if self.inputs else (self.outputs[0] if self.outputs else "UNKNOWN")

    @property
    def is_gemm(self) -> bool:
        kind = f"{self.layer_type} {self.parameter_type or ''}".lower()
        return any(k in kind for k in ("matrixmultiply", "gemm", "fullyconnected", "convolution"))

    @property
    def is_opaque(self) -> bool:
        """A fused region (Myelin / ForeignNode) whose inner GEMMs the inspector does not itemize."""
        kind = f"{self.layer_type} {self.name}".lower()
        return "myelin" in kind or "foreignnode" in kind

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.layer_type, "parameter_type": self.parameter_type, "precision": self.precision,
                "inputs": self.inputs, "outputs": self.outputs, "onnx_nodes": self.onnx_nodes, "tactic": self.tactic}


_ONNX_META = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def parse_layer_info(info: str | dict) -> list[LayerRecord]:
    """``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)`` -> layer records.

    Needs an engine built with ``ProfilingVerbosity.DETAILED``; with LAYER_NAMES_ONLY the layers are
    bare strings, which is a user-visible error (no precisions to check).
    """
    doc = json.loads(info) if isinstance(info, str) else info
    layers = doc.get("Layers", []) if isinstance(doc, dict) else []
    out = []
    for raw in layers:
        if isinstance(raw, str):
            raise BertoptError(
                "the engine inspector returned layer names only: the engine was not built with detailed profiling verbosity",
                hint="rebuild; bertopt sets ProfilingVerbosity.DETAILED so the precision map can be written",
            )
        meta = str(raw.get("Metadata") or "").replace("\x1e", "+").replace("\x1f", "+")
        nodes = [n.strip() for m in _ONNX_META.findall(meta) for n in m.split("+") if n.strip()]
        out.append(LayerRecord(
            name=str(raw.get("Name", "")),
            layer_type=str(raw.get("LayerType", "")),
            parameter_type=raw.get("ParameterType"),
            inputs=[tensor_precision(t) for t in raw.get("Inputs", []) if isinstance(t, dict)],
            outputs=[tensor_precision(t) for t in raw.get("Outputs", []) if isinstance(t, dict)],
            onnx_nodes=nodes,
            tactic=str(raw.get("TacticName") or raw.get("TacticValue") or "") or None,
        ))
    return out


_PROFILE_SUFFIX = re.compile(r"\s*\[profile \d+\]\s*$")


def unique_layers(layers: Sequence[LayerRecord]) -> list[LayerRecord]:
    """One record per layer: an engine with several optimization profiles lists each layer once per
    profile (names of the later copies carry a ``[profile N]`` suffix). Counting them all would
    multiply the GEMM counts by the number of profiles; the first copy is kept."""
    seen: set[str] = set()
    out = []
    for layer in layers:
        key = _PROFILE_SUFFIX.sub("", layer.name)
        if key in seen:
            continue
        seen.add(key)
        out.append(layer)
    return out


def precision_map(layers: Sequence[LayerRecord]) -> dict:
    """What goes into ``precision_map.json``: every layer (once, see ``unique_layers``), plus GEMM
    counts per precision."""
    layers = unique_layers(layers)
    gemms: dict[str, int] = {}
    for layer in layers:
        if layer.is_gemm:
            gemms[layer.precision] = gemms.get(layer.precision, 0) + 1
    return {"layers": [layer.to_json() for layer in layers], "gemm_precisions": gemms, "opaque_layers": sum(1 for x in layers if x.is_opaque)}


@dataclass
class Int8Check:
    int8: list[str] = field(default_factory=list)  # expected GEMMs found in INT8 layers
    fell_back: dict[str, str] = field(default_factory=dict)  # expected GEMM -> the precision it ran in
    unverified: list[str] = field(default_factory=list)  # inside fused (Myelin) regions or not itemized

    @property
    def ok(self) -> bool:
        return not self.fell_back

    def to_json(self) -> dict:
        return {"ok": self.ok, "int8": len(self.int8), "fell_back": self.fell_back, "unverified": self.unverified}


def check_int8(layers: Sequence[LayerRecord], expected: Sequence[str]) -> Int8Check:
    """Did every GEMM the Q/DQ graph quantizes run in INT8?

    An expected ONNX node is matched to the engine layers that name it (layer name or ``[ONNX Layer:]``
    metadata). In a GEMM layer it must compute in INT8; if it only appears in fused Myelin regions (or
    nowhere, e.g. folded away) it is *unverified*: reported, not failed, since the inspector does not
    itemize those GEMMs.
    """
    res = Int8Check()
    for node in expected:
        hits = [x for x in layers if node in x.onnx_nodes or _name_has(x.name, node)]
        gemm_hits = [x for x in hits if x.is_gemm and not x.is_opaque]
        if gemm_hits:
            bad = [x.precision for x in gemm_hits if x.precision != "INT8"]
            if bad:
                res.fell_back[node] = bad[0]
            else:
                res.int8.append(node)
        else:
            res.unverified.append(node)
    return res


def _name_has(layer_name: str, node: str) -> bool:
    parts = [p.strip() for p in re.split(r"\s\+\s|\|\|", layer_name)]
    return node in parts


# ===================================================================================== build
@dataclass
class EngineBuild:
    engine: bytes
    layer_info: str
    tensorrt_version: str
    build_seconds: float
    timing_cache: dict


def polygraphy_profiles(profiles, input_names: Sequence[str], network_inputs: Sequence[str] | None = None) -> list:
    """bertopt profiles -> ``polygraphy.backend.trt.Profile`` objects: every (batch, seq) input gets the
    profile's (min, opt, max) shapes (``Profile.add(name, min, opt, max)``). Inputs the network does not
    have (e.g. token_type_ids folded away) are left out when ``network_inputs`` is given."""
    from polygraphy.backend.trt import Profile as PolyProfile

    names = [n for n in input_names if network_inputs is None or n in network_inputs]
    out = []
    for prof in profiles:
        lo, opt, hi = prof.shapes()
        p = PolyProfile()
        for name in names:
            p.add(name, min=lo, opt=opt, max=hi)
        out.append(p)
    return out


def graph_inputs(onnx_path: Path) -> list[str]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


@dataclass
class BuildLoaders:
    """The Polygraphy loader chain of one build (nothing runs until ``engine_bytes()`` is called)."""
    network: Any  # NetworkFromOnnxPath
    config: Any  # CreateConfig
    engine_bytes: Any  # EngineBytesFromNetwork


def build_loaders(onnx_path: Path, profiles, input_names: Sequence[str], *, load_timing_cache: Any, save_timing_cache: Any,
                  profiling_verbosity: Any = None, workspace_mib: int | None = None, memory_pool: Any = None) -> BuildLoaders:
    """Compose the build: a strongly typed network from the ONNX file, a config with the profiles, the
    timing cache and the profiling verbosity (DETAILED: the precision map needs per-layer types), no
    precision flags (see the module docstring), TF32 off (Polygraphy's default: what the ONNX types
    say is FP32 stays FP32, e.g. the kept LayerNorm/Softmax). ``profiling_verbosity``/``memory_pool`` are TensorRT
    enum values, passed in so that composing needs no TensorRT."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    config = CreateConfig(
        profiles=polygraphy_profiles(profiles, input_names, graph_inputs(onnx_path)),
        load_timing_cache=load_timing_cache,
        profiling_verbosity=profiling_verbosity,
        memory_pool_limits={memory_pool: int(workspace_mib) << 20} if workspace_mib and memory_pool is not None else None,
        fp16=False, int8=False, tf32=False,
    )
    return BuildLoaders(network, config, EngineBytesFromNetwork(network, config=config, save_timing_cache=save_timing_cache))


def timing_cache_state(path: Path, config) -> str:
    """``absent`` | ``usable`` | ``foreign`` (made by another GPU or TensorRT version, or unreadable);
    ``config`` is a TensorRT builder config.

    A cache is usable when TensorRT combines it into an empty one with ``ignore_mismatch=False``
    (``ITimingCache.combine``: "must be generated by a TensorRT build of exact same version, otherwise
    combine will be skipped and return false"; a cache from a different device needs ignore_mismatch).
    """
    if not path.is_file() or path.stat().st_size == 0:
        return "absent"
    try:
        old = config.create_timing_cache(path.read_bytes())
        return "usable" if old is not None and config.create_timing_cache(b"").combine(old, False) else "foreign"
    except Exception:  # noqa: BLE001 - the bindings raise on a cache they cannot parse
        return "foreign"


def build_engine(onnx_path: Path, profiles, input_names: Sequence[str], *, timing_cache: Path, workspace_mib: int | None = None,
                 log: Any = None) -> EngineBuild:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine (TensorRT 10/11).

    Timing cache: a usable cache file is loaded, and Polygraphy merges the build's entries back into it
    (under its file lock). A cache from another GPU or TensorRT version is neither loaded nor merged:
    Polygraphy's save merges with ``ignore_mismatch=True``, which would keep the other GPU's timings
    under this GPU's header. The build starts from an empty cache and replaces the file, and says so.
    """
    import io

    from polygraphy.backend.trt import util as trt_util
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    trt = require_tensorrt()
    say = log or (lambda _m: None)
    state = timing_cache_state(timing_cache, trt.Builder(trt_util.get_trt_logger()).create_builder_config())
    cache_info: dict[str, Any] = {"path": str(timing_cache), "state": state,
                                  "loaded_bytes": timing_cache.stat().st_size if state == "usable" else 0}
    fresh = io.BytesIO() if state == "foreign" else None
    if state == "foreign":
        cache_info["note"] = "the cache file was made by another GPU or TensorRT version: started a new one and replaced it"
        say("timing cache from another GPU/TensorRT version: starting a new one")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    loaders = build_loaders(onnx_path, profiles, input_names,
                            load_timing_cache=str(timing_cache) if state == "usable" else None,
                            save_timing_cache=fresh if fresh is not None else str(timing_cache),
                            profiling_verbosity=trt.ProfilingVerbosity.DETAILED, workspace_mib=workspace_mib,
                            memory_pool=trt.MemoryPoolType.WORKSPACE)
    say(f"building the TensorRT {trt.__version__} engine ({len(profiles)} profile(s))")
    t = time.perf_counter()
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):  # Polygraphy's progress lines would mix into bertopt's output
            engine_bytes = loaders.engine_bytes()
    except PolygraphyException as e:  # a parser error or a failed build: Polygraphy logged TensorRT's reasons
        raise BertoptError(f"{onnx_path}: TensorRT could not build an engine: {str(e)[:600]}",
                           hint="check op support and profiles with `polygraphy run MODEL --trt --verbose` or trtexec --verbose") from None
    seconds = time.perf_counter() - t
    if fresh is not None:
        _replace_file(timing_cache, fresh.getvalue())
    cache_info["saved_bytes"] = timing_cache.stat().st_size if timing_cache.is_file() else 0

    engine = deserialize_engine(bytes(engine_bytes), onnx_path)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return EngineBuild(engine=bytes(engine_bytes), layer_info=info, tensorrt_version=str(trt.__version__),
                       build_seconds=round(seconds, 2), timing_cache=cache_info)


def deserialize_engine(data: bytes, where: Path):
    """``runtime.deserialize_cuda_engine`` through Polygraphy's ``EngineFromBytes``; ``None`` (wrong
    TensorRT version or GPU, a corrupt file) is a user error, not an AttributeError later."""
    from polygraphy.backend.trt import EngineFromBytes
    from polygraphy.exception import PolygraphyException

    try:
        engine = EngineFromBytes(data)()
    except PolygraphyException:
        engine = None
    if engine is None:
        raise BertoptError(f"{where}: TensorRT cannot deserialize this engine",
                           hint="engines are tied to the TensorRT version and GPU they were built with: rebuild it here")
    return engine


def _replace_file(path: Path, data: bytes) -> None:
    """Write atomically: a concurrent build never reads half a cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ===================================================================================== stage
def build_stage(art, src: Path, out: Path, o, data_path, *, force: bool, verbose: bool):
    """``run_build(backend="tensorrt")`` (``o`` a ``BuildOptions``): options are validated before TensorRT is imported."""
    from bertopt.artifacts import load_artifact, up_to_date, write_artifact
    from bertopt.backends.stage import stage_inputs
    from bertopt.ui import skipped

    keep = tuple(k.strip() for k in (o.keep_fp32 or "").split(",") if k.strip())
    max_length = int(art.model_info.get("max_length") or 512)
    input_names = list(art.model_info.get("inputs") or ("input_ids", "attention_mask", "token_type_ids"))
    profiles, planned_from, hist = _plan_profiles(art, o.profile, data_path, o.text_column, max_length)
    prepared = prepare_onnx(src, o.precision, keep)

    cache_path = Path(o.timing_cache).expanduser() if o.timing_cache else default_timing_cache()
    inputs = stage_inputs(art, src, data_path)
    params = {"backend": "tensorrt", "precision": prepared.precision, "profiles": [p.spec() for p in profiles], "keep_fp32": list(keep)}
    if (done := up_to_date(out, "build", inputs, params, force)) is not None:
        skipped("build", out)
        return done
    trt = require_tensorrt()

    with write_artifact(out, "build", inputs, params) as w:
        eb, layers, pmap, check = _write_engine(w, art, prepared, profiles, input_names, cache_path)
        w.extra["build"] = {
            "backend": "tensorrt",
            "precision": prepared.precision,
            "tensorrt": eb.tensorrt_version,
            "strongly_typed": True,
            "keep_fp32": list(keep),
            "fp16_conversion": prepared.fp16,
            "profiles": [p.to_json() for p in profiles],
            "profiles_planned_from": planned_from,
            "length_histogram": hist,
            "max_sequence_length": max(p.seq[2] for p in profiles),
            "max_batch": max(p.batch[2] for p in profiles),
            "timing_cache": eb.timing_cache,
            "build_seconds": eb.build_seconds,
            "gemm_precisions": pmap["gemm_precisions"],
            "int8_check": pmap["int8_check"],
        }
        if check is not None and not check.ok:
            bad = ", ".join(f"{k} ({v})" for k, v in list(check.fell_back.items())[:8])
            raise BertoptError(
                f"{len(check.fell_back)} GEMM(s) that the Q/DQ graph quantizes did not run in INT8: {bad}",
                hint="TensorRT could not fuse their Q/DQ (check the per-layer precisions with --verbose, or re-calibrate with "
                     "Q/DQ on both MatMul inputs); nothing was written",
            )
    _report_build(out, prepared, eb, pmap, profiles, check, layers, verbose)
    _ = trt
    return load_artifact(out)


def _plan_profiles(art, profile, data_path, text_column, max_length: int):
    """The optimization profiles (explicit, planned from ``data_path``'s token lengths, or the default),
    where they were planned from and the length histogram (both None unless planned)."""
    from bertopt.backends import profiles as prof

    planned_from = None
    hist = None
    cover = prof.parse_auto(profile, max_length) if profile else 0
    if profile and cover is None:
        profiles = prof.parse_profiles(profile, max_length=max_length)
    elif data_path is not None:
        from bertopt.data import load_texts, load_tokenizer

        texts = load_texts(data_path, text_column=text_column).texts
        tok = load_tokenizer(art.tokenizer_dir, where=str(art.path))
        lengths = prof.token_lengths(tok, texts, max_length)
        profiles = prof.plan_profiles(lengths, max_length=max_length, cover=cover or 0)
        planned_from = {"data": str(data_path), "texts": len(lengths), "max_tokens": max(lengths)}
        hist = prof.length_histogram(lengths, max_length)
    elif profile:
        raise BertoptError("--profile auto plans profiles from real texts, but no --data was given", hint="pass --data FILE, or give explicit profiles")
    else:
        profiles = prof.default_profiles(max_length)
    return profiles, planned_from, hist


def _write_engine(w, art, prepared, profiles, input_names, cache_path: Path):
    """Into the artifact being written: the prepared ONNX, the engine built from it, its precision map,
    profiles and tokenizer. Returns the build, its unique layers, the precision map and the INT8 check."""
    import onnx

    from bertopt.artifacts import MODEL_FILE
    from bertopt.ui import console

    onnx_out = w.add_output("onnx", MODEL_FILE)
    onnx.save(prepared.model, str(onnx_out))
    with console.status("build: tensorrt") as status, w.timed("build"):
        eb = build_engine(onnx_out, profiles, input_names, timing_cache=cache_path, log=lambda m: status.update(f"build: {m}"))
    w.add_output("model", ENGINE_FILE).write_bytes(eb.engine)
    layers = unique_layers(parse_layer_info(eb.layer_info))
    pmap = precision_map(layers)
    check = check_int8(layers, prepared.expected_int8) if prepared.precision == "int8" else None
    pmap["int8_check"] = check.to_json() if check else None
    w.add_output("precision_map", PRECISION_MAP_FILE).write_text(json.dumps(pmap, indent=1) + "\n")
    w.add_output("profiles", PROFILES_FILE).write_text(json.dumps([p.to_json() for p in profiles], indent=1) + "\n")
    w.copy_tokenizer(art.tokenizer_dir)
    w.model = dict(art.model_info)
    return eb, layers, pmap, check


def _report_build(out: Path, prepared, eb, pmap, profiles, check, layers, verbose: bool) -> None:
    from bertopt.ui import note

    note(f"build: {out / ENGINE_FILE}  backend=tensorrt {eb.tensorrt_version} precision={prepared.precision} "
         f"GEMMs by precision {pmap['gemm_precisions']} profiles: {'; '.join(p.spec() for p in profiles)}")
    if eb.timing_cache.get("note"):
        note(f"build: timing cache {eb.timing_cache['path']}: {eb.timing_cache['note']}")
    if check is not None and check.unverified:
        note(f"build: {len(check.unverified)} quantized GEMM(s) sit in fused Myelin regions the inspector does not itemize: unverified")
    if verbose:
        for layer in layers:
            note(f"  {layer.precision:6s} {layer.layer_type:28s} {layer.name[:100]}")


# ===================================================================================== runner
class TensorRTRunner:
    """Run a built engine from numpy feeds through Polygraphy's ``TrtRunner``; used by ``bench`` (and by a
    user's service).

    ``runner(feeds) -> {output: array}`` copies host->device, executes and copies back (float32 out).
    ``runner.run_device_only(feeds)`` executes on inputs already on the device (uploaded once per
    distinct feeds) with ``infer(copy_outputs_to_host=False)``, so ``bench`` can time both.
    The engine's profile covering each (batch, seq) is chosen with ``TrtRunner.set_profile``.
    """

    def __init__(self, artifact_or_path: Any):
        from bertopt.artifacts import Artifact, load_artifact
        from bertopt.backends.profiles import Profile

        trt = require_tensorrt()
        from polygraphy.backend.trt import TrtRunner
        from polygraphy.datatype import DataType

        art = artifact_or_path if isinstance(artifact_or_path, Artifact) else load_artifact(artifact_or_path)
        self.path = art.model_path
        self.profiles = [Profile.from_json(p) for p in art.manifest.get("build", {}).get("profiles", [])]
        self.engine = deserialize_engine(self.path.read_bytes(), self.path)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # tensor dtypes through Polygraphy's DataType, as TrtRunner itself does (no trt.nptype)
        self.dtypes = {n: np.dtype(DataType.to_dtype(DataType.from_dtype(self.engine.get_tensor_dtype(n), source_module="tensorrt"), "numpy"))
                       for n in names}
        self._runner = TrtRunner(self.engine, optimization_profile=0)
        self._runner.activate()
        self._profile = 0
        self._device: dict[str, Any] = {}
        self._staged: tuple | None = None

    def _select_profile(self, batch: int, seq: int) -> None:
        from polygraphy.exception import PolygraphyException

        from bertopt.backends.profiles import select_profile

        idx = select_profile(self.profiles, batch, seq) if self.profiles else 0
        if idx < 0:
            spans = "; ".join(p.spec() for p in self.profiles)
            raise BertoptError(f"{self.path}: shape batch={batch} seq={seq} is outside the engine's profiles ({spans})",
                               hint="tokenize with truncation to the engine's max sequence length / split batches, or rebuild with a wider --profile")
        if idx != self._profile:
            try:
                self._runner.set_profile(idx)
            except PolygraphyException:
                raise BertoptError(f"{self.path}: TensorRT refused optimization profile {idx}", hint="rebuild the engine") from None
            self._profile = idx

    def _host_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BertoptError(f"{self.path}: the engine needs input(s) {', '.join(missing)}", hint="feed " + ", ".join(self.input_names))
        first = feeds[self.input_names[0]]
        self._select_profile(int(first.shape[0]), int(first.shape[1]))
        return {n: np.ascontiguousarray(feeds[n], dtype=self.dtypes[n]) for n in self.input_names}

    def _infer(self, feeds: dict, **kw) -> dict:
        from polygraphy.exception import PolygraphyException

        try:
            return self._runner.infer(feeds, **kw)
        except PolygraphyException as e:
            raise BertoptError(f"{self.path}: TensorRT execution failed ({str(e)[:300]})", hint="check the input shapes against the engine's profiles, or rebuild the engine on this GPU") from None

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._infer(self._host_feeds(feeds))
        # TrtRunner reuses its output buffers between calls: copy (and widen FP16) before returning
        return {k: np.array(v, dtype=np.float32 if v.dtype == np.float16 else v.dtype) for k, v in out.items()}

    def run_device_only(self, feeds: dict[str, np.ndarray]) -> None:
        """Execute without host<->device copies (inputs uploaded once per distinct feeds)."""
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        key = tuple((id(feeds[n]), feeds[n].shape) for n in self.input_names if n in feeds)
        if key != self._staged:
            for name, arr in self._host_feeds(feeds).items():
                buf = self._device.get(name)
                if buf is None:
                    buf = self._device[name] = cuda.DeviceArray(shape=arr.shape, dtype=DataType.from_dtype(arr.dtype))
                buf.resize(arr.shape)
                buf.copy_from(arr)
            self._staged = key
        else:
            first = feeds[self.input_names[0]]
            self._select_profile(int(first.shape[0]), int(first.shape[1]))
        # device inputs are used in place ("If the provided inputs already reside in GPU memory, no additional
        # copies are made"); infer() synchronizes its stream before returning
        self._infer(dict(self._device), check_inputs=False, copy_outputs_to_host=False)

    def time(self, feeds: dict[str, np.ndarray], iters: int = 50, warmup: int = 10, copies: bool = True) -> np.ndarray:
        """Latencies (ms) of ``iters`` calls, with (``copies``) or without host<->device copies."""
        fn = self.__call__ if copies else self.run_device_only
        for _ in range(warmup):
            fn(feeds)
        ts = np.empty(iters)
        for i in range(iters):
            t = time.perf_counter()
            fn(feeds)
            ts[i] = (time.perf_counter() - t) * 1000
        return ts

    def close(self) -> None:
        for buf in self._device.values():
            buf.free()
        self._device.clear()
        self._runner.deactivate()
