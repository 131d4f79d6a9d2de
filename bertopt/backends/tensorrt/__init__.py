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

Modules: :mod:`.prepare` (the ONNX the engine is built from), :mod:`.inspector` (the engine inspector's
layer JSON, the INT8 check), :mod:`.engine` (the Polygraphy loader chain, timing cache, deserializing),
:mod:`.stage` (``build_stage``), :mod:`.runner` (:class:`.runner.TensorRTRunner`); here: the artifact's
file names and the availability checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from bertopt.errors import BertoptError, MissingDependencyError

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
