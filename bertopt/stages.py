"""The stage functions, by name: what the CLI commands and the recipe runner both call.

Contract of a stage function ``run_<stage>(input, out, *, <options>..., force=False, verbose=False)``:
- ``input`` is an artifact folder, a bare ``.onnx`` or (compress, export, qat) a Hugging Face folder;
  ``out`` the artifact folder to write.
- keyword-only options, each with a default and a type annotation: the recipe runner validates a
  step's keys against exactly these (unknown key or bad value = an error naming the field);
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
    "export": "bertopt.export:run_export",
    "fuse": "bertopt.passes.pipeline:run_fuse",
    "calibrate": "bertopt.calibrators.stage:run_calibrate",
    "qat": "bertopt.qat.stage:run_qat",
    "build": "bertopt.backends.stage:run_build",
    "bench": "bertopt.bench.stage:run_bench",
}


def available() -> list[str]:
    return [name for name, target in STAGES.items() if importlib.util.find_spec(target.split(":")[0]) is not None]


def get(name: str) -> Callable:
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


