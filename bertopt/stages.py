"""The stage functions, by name: what the CLI commands and the recipe runner both call.

Contract of a stage function ``run_<stage>(input, out, options=None, *, force=False, **kwargs)``
(``--verbose`` is :mod:`bertopt.log`'s level, not a parameter):
- ``input`` is an artifact folder, a bare ``.onnx`` or (compress, export, qat) a Hugging Face folder;
  ``out`` the artifact folder to write.
- its options are one typed object, ``options(<stage>)`` (a :class:`bertopt.options.StageOptions`):
  the CLI passes it built (``options=``), Python callers and the recipe runner pass keywords, which the
  stage parses (``XOptions.parse(kwargs)``: unknown key or bad value = an error naming the field);
- begins with ``artifacts.up_to_date(...)`` and returns the existing artifact when nothing changed;
- writes through ``artifacts.write_artifact`` (atomic) and returns ``artifacts.load_artifact(out)``;
- raises ``BertoptError`` for the user's mistakes, never prints a traceback for them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

# stage name -> "module:function", imported on first use (``available`` leaves out a module that cannot be found).
STAGES: dict[str, str] = {
    "compress": "bertopt.compress.stage:run_compress",
    "export": "bertopt.export.stage:run_export",
    "fuse": "bertopt.passes.stage:run_fuse",
    "calibrate": "bertopt.calibrators.stage:run_calibrate",
    "qat": "bertopt.qat.stage:run_qat",
    "build": "bertopt.backends.stage:run_build",
    "bench": "bertopt.bench.stage:run_bench",
}

# stage name -> "module:class" of its options (light modules: no torch/onnxruntime at import).
OPTIONS: dict[str, str] = {
    "compress": "bertopt.compress.options:CompressOptions",
    "export": "bertopt.export.options:ExportOptions",
    "fuse": "bertopt.passes.options:FuseOptions",
    "calibrate": "bertopt.calibrators.options:CalibrateOptions",
    "qat": "bertopt.qat.options:QatOptions",
    "build": "bertopt.backends.options:BuildOptions",
    "bench": "bertopt.bench.options:BenchOptions",
}


def available() -> list[str]:
    return [name for name, target in STAGES.items() if importlib.util.find_spec(target.split(":")[0]) is not None]


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str) -> Callable:
    return _load(STAGES[name])


def options(name: str):
    """The stage's options class (a ``bertopt.options.StageOptions``)."""
    return _load(OPTIONS[name])
