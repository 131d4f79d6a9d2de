"""OpenVINO on the CPU: an IR converted from a bertopt ONNX artifact, compiled per static shape bucket
(or with dynamic shapes), its runtime graph read back to check which layers execute in INT8.

``build`` (:mod:`.stage`) writes ``openvino_model.xml``/``openvino_model.bin``, ``cache/`` (OpenVINO's compiled blobs,
``CACHE_DIR``, one per compiled shape) and ``precisions.json``; :class:`.runner.OpenVINORunner` runs it.
"""

from __future__ import annotations

# the names sentence-transformers (backend="openvino") and optimum-intel look for
IR_FILE = "openvino_model.xml"
WEIGHTS_FILE = "openvino_model.bin"
CACHE_DIR = "cache"
PRECISIONS_FILE = "precisions.json"
DEVICE = "CPU"


def require_openvino():
    """The ``openvino`` module, or a user error saying how to get it."""
    from bertopt.errors import BertoptError

    try:
        import openvino
    except ImportError:
        raise BertoptError("--backend openvino needs the openvino package, which is not installed",
                           hint="pip install openvino (a dependency of bertopt: reinstall bertopt)") from None
    return openvino
