"""The shape of a ``manifest.json``: each field's JSON type, checked when a manifest is read (moved out of ``artifacts.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bertopt.errors import BertoptError

_DICT_FIELDS = ("inputs", "params", "tools", "model", "outputs", "metrics", "timings", "build", "quantization", "compression", "training")
_STR_FIELDS = ("stage", "created", "fingerprint", "bertopt_version", "bertopt_code")
_MODEL_FIELDS = {"architecture": (str, type(None)), "task": (str,), "inputs": (list,), "outputs": (list,), "pooling": (str, type(None)),
                 "hidden_size": (int, type(None)), "num_layers": (int, type(None)), "num_heads": (int, type(None)),
                 "max_length": (int, type(None)), "num_labels": (int, type(None)), "id2label": (dict, type(None))}
_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def manifest_problem(m: Any) -> str | None:
    """What is wrong with the shape of a parsed manifest (the field, what it holds), or None."""
    def kind(v: Any) -> str:
        return _JSON_TYPE.get(type(v), type(v).__name__)

    if not isinstance(m, dict):
        return f"the manifest is {kind(m)}, not an object"
    for k in _DICT_FIELDS:
        if k in m and not isinstance(m[k], dict):
            return f"field '{k}' is {kind(m[k])}, not an object"
    for k in _STR_FIELDS:
        if k in m and not isinstance(m[k], str):
            return f"field '{k}' is {kind(m[k])}, not a string"
    for k, types in _MODEL_FIELDS.items():
        v = m.get("model", {}).get(k)
        if k in m.get("model", {}) and (not isinstance(v, types) or isinstance(v, bool)):
            return f"field 'model.{k}' is {kind(v)}"
        if isinstance(v, list) and not all(isinstance(x, str) for x in v):
            return f"field 'model.{k}' is not an array of strings"
    for section in ("outputs", "inputs"):
        for key, entry in m.get(section, {}).items():
            if section == "outputs" and isinstance(entry, str):
                continue
            if not isinstance(entry, dict):
                return f"field '{section}.{key}' is {kind(entry)}, not an object"
            if section == "outputs" and not isinstance(entry.get("path"), str):
                return f"field 'outputs.{key}.path' is {kind(entry['path']) if 'path' in entry else 'missing'}, not a string"
            for sub in ("path", "sha256"):
                if not isinstance(entry.get(sub), (str, type(None))):
                    return f"field '{section}.{key}.{sub}' is {kind(entry[sub])}, not a string"
    return None


def read_manifest(mpath: Path) -> dict:
    """The parsed ``manifest.json`` at ``mpath``; unreadable JSON or a manifest of the wrong shape is a user error."""
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BertoptError(f"{mpath}: unreadable manifest ({str(e)[:200]})", hint="re-run the stage that wrote this folder") from None
    problem = manifest_problem(manifest)
    if problem:
        raise BertoptError(f"{mpath}: not a bertopt manifest: {problem}",
                           hint="the file was edited or written by another tool; re-run the stage that wrote this folder")
    return manifest
