"""The engine inspector's layer JSON (TensorRT 10.x and 11.x forms) -> layer records, the precision map and the
INT8 check: did every GEMM the Q/DQ graph quantizes run in INT8 (plain Python: no TensorRT needed)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Sequence

from bertopt.errors import BertoptError

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
