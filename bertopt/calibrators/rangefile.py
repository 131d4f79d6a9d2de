"""The portable ranges file and TensorRT's calibration cache.

``ranges.json`` (schema ``bertopt.ranges/1``) holds everything data-derived that the Q/DQ model is
built from, so ``bertopt calibrate IN -o OUT --ranges ranges.json`` regenerates the same model
without the calibration data (another machine, another ONNX Runtime):

    {"schema": "bertopt.ranges/1",
     "hashes": {"model": sha256 of the input model.onnx, "tokenizer": sha256 of tokenizer/ | null,
                "data": sha256 of the calibration file},
     "calibration": {"method", "percentile", "samples", "max_length", "data": path, "text_column"},
     "placement": {"include_bmm", "exclude": [node or glob], "exclude_matches": {pattern: GEMMs matched},
                   "skipped": {node: reason}},
     "equalization": {"alpha", "shift", "bias_correction",
                      "tensors": {tensor: {"scale": [...], "shift": [...], "mean": [...]}}},
     "activations": {tensor: amax, ...},       # per-tensor amax of every quantized GEMM input
     "trt_cache": {tensor: amax, ...}}         # per-tensor amax of the input model's float tensors

``calibration.cache`` is TensorRT's text format for implicit (TensorRT 10) INT8: a header
``TRT-<version>-<calibrator>`` and one ``tensor: <hex>`` line per tensor, where ``<hex>`` is the
big-endian IEEE-754 float32 of the scale ``amax / 127``. Its tensors are the *input* model's (the
FP32 graph such users build from, without bertopt's equalization), so its ranges come from a pass
over that graph.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Mapping

from bertopt.errors import BertoptError

SCHEMA = "bertopt.ranges/1"
RANGES_FILE = "ranges.json"
CACHE_FILE = "calibration.cache"
# NV_TENSORRT_VERSION of TensorRT 10.3 (major * 10000 + minor * 100 + patch); the last line of
# TensorRT with implicit INT8 is 10.x.
TRT_VERSION = 100300
CALIBRATOR_NAMES = {"max": "MinMaxCalibration", "entropy": "EntropyCalibration2",
                    "percentile": "EntropyCalibration2", "mse": "EntropyCalibration2"}


def write_ranges(path: Path, doc: dict) -> None:
    doc = {"schema": SCHEMA, **doc}
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def read_ranges(path: str | Path) -> dict:
    """Load and check a ranges file; every problem names the file and the field."""
    from bertopt.paths import resolve_path

    p = resolve_path(path)
    if p.is_dir() and (p / RANGES_FILE).is_file():
        p = p / RANGES_FILE
    if not p.is_file():
        raise BertoptError(f"{p}: no such ranges file", hint=f"pass the {RANGES_FILE} a `bertopt calibrate` run wrote (or its artifact folder)")
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BertoptError(f"{p}: not valid JSON ({e})", hint=f"pass the {RANGES_FILE} a `bertopt calibrate` run wrote") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise BertoptError(f"{p}: schema is {doc.get('schema') if isinstance(doc, dict) else None!r}, expected '{SCHEMA}'",
                           hint=f"pass the {RANGES_FILE} a `bertopt calibrate` run wrote")
    for key in ("hashes", "calibration", "placement", "equalization", "activations"):
        if not isinstance(doc.get(key), dict):
            raise BertoptError(f"{p}: field '{key}' is missing or not an object", hint="the file is damaged; re-run calibrate")
    for name, amax in doc["activations"].items():
        if not isinstance(amax, (int, float)) or not math.isfinite(amax) or amax <= 0:
            raise BertoptError(f"{p}: activations['{name}'] = {amax!r}: needs a finite number > 0", hint="the file is damaged; re-run calibrate")
    doc["_path"] = str(p)
    return doc


def trt_cache_text(amax: Mapping[str, float], method: str = "entropy", version: int = TRT_VERSION) -> str:
    """TensorRT's calibration cache text. Tensors with no usable range (0, NaN) are left out: TensorRT
    then keeps those layers in higher precision."""
    lines = [f"TRT-{version}-{CALIBRATOR_NAMES.get(method, 'EntropyCalibration2')}"]
    for name, a in amax.items():
        if a is None or not math.isfinite(a) or a <= 0:
            continue
        lines.append(f"{name}: {struct.pack('>f', a / 127.0).hex()}")
    return "\n".join(lines) + "\n"


def parse_trt_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) of a cache written by :func:`trt_cache_text` (or TensorRT)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("not a TensorRT calibration cache (no TRT-<version>-<calibrator> header)")
    out = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, _, hexval = line.rpartition(": ")
        out[name] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
    return lines[0], out
