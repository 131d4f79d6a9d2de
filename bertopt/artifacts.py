"""Artifact folders: model file(s) + ``manifest.json``, written atomically.

Every stage writes one folder. Its manifest records the stage, each input's path and sha256, the
resolved parameters, tool versions, outputs (with sha256), metrics and timings, and a ``fingerprint``
(stage + input hashes + parameters + bertopt's version and a digest of its source) that lets the
recipe runner skip a stage whose inputs, parameters and code did not change (Make's "rebuild what
changed").

Writes are atomic: the stage writes into a temporary sibling folder that is renamed into place only
when the manifest is complete, so an interrupted stage never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bertopt import __version__
from bertopt.errors import BertoptError
from bertopt.manifest import read_manifest
from bertopt.outdir import (DISK_ERRNOS, _os_call, begin, check_out, os_error, output_lock, real_out, remove_stale_temps,
                            restore_swapped)

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "added_tokens.json",
)


# --------------------------------------------------------------------------------------- hashing
def sha256_file(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in a process."""
    path = Path(path)
    st = path.stat()
    return _sha256_file(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.cache
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the memo: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder as the sorted list of (relative path, file sha256)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel or rel == MANIFEST:
            continue
        h.update(rel.encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------- versions
def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that can change an artifact; absent ones are None (never imported here)."""
    from importlib import metadata

    out: dict[str, str | None] = {"bertopt": __version__}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "onnx-graphsurgeon", "tensorrt", "nvidia-modelopt", "openvino"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# --------------------------------------------------------------------------------------- reading
@dataclass
class Artifact:
    """An artifact folder as the next stage sees it."""

    path: Path
    manifest: dict = field(default_factory=dict)
    skipped: bool = False  # True when a stage found this artifact up to date and did no work

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "onnx")

    @property
    def model_info(self) -> dict:
        return self.manifest.get("model", {})

    @property
    def task(self) -> str:
        return self.model_info.get("task", "feature-extraction")

    def output(self, key: str = "model") -> Path:
        entry = self.manifest.get("outputs", {}).get(key)
        if entry is None:
            raise BertoptError(
                f"{self.path / MANIFEST}: no output '{key}' recorded",
                hint=f"this artifact was written by stage '{self.stage}', which has outputs: "
                + ", ".join(self.manifest.get("outputs", {})),
            )
        rel = entry["path"] if isinstance(entry, dict) else entry
        return self.path / rel

    @property
    def model_path(self) -> Path:
        return self.output("model")

    @property
    def tokenizer_dir(self) -> Path | None:
        p = self.path / TOKENIZER_DIR
        return p if p.is_dir() else None


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Open an artifact folder (or a bare ``.onnx`` file a user brought) and check its hashes."""
    from bertopt.models import hf_files
    from bertopt.paths import resolve_path

    path = resolve_path(path)
    if not path.exists():
        raise BertoptError(f"{path}: no such file or folder", hint="pass an artifact folder written by a bertopt stage")
    if path.is_file():
        if path.suffix != ".onnx":
            raise BertoptError(f"{path}: not an ONNX file or artifact folder", hint="pass a .onnx file or an artifact folder")
        check_onnx_readable(path)
        tok = path.parent / TOKENIZER_DIR
        return Artifact(
            path=path.parent,
            manifest={
                "stage": "onnx",
                "outputs": {"model": {"path": path.name}},
                "model": {"task": "feature-extraction", "architecture": "bert"},
                "tokenizer_present": tok.is_dir(),
            },
        )
    mpath = path / MANIFEST
    if not mpath.is_file() and (hf := hf_files(path)):
        raise BertoptError(f"{path}: looks like a Hugging Face model folder ({', '.join(hf)}) but has no config.json",
                           hint="save the model with `model.save_pretrained(DIR)` (it writes config.json beside the weights), "
                                "or copy config.json from where the model came from")
    if not mpath.is_file():
        raise BertoptError(
            f"{path}: no {MANIFEST}: not a bertopt artifact folder",
            hint="pass a folder written by a bertopt stage (export, fuse, calibrate, ...), or a bare .onnx file",
        )
    manifest = read_manifest(mpath)
    art = Artifact(path=path, manifest=manifest)
    if verify:
        for key, entry in manifest.get("outputs", {}).items():
            if not isinstance(entry, dict) or "sha256" not in entry:
                continue
            f = path / entry["path"]
            if not f.exists():
                raise BertoptError(f"{f}: missing (listed as output '{key}' in {mpath})", hint="re-run the stage that wrote this folder")
            if f.is_file() and sha256_file(f) != entry["sha256"]:
                raise BertoptError(
                    f"{f}: sha256 does not match {mpath} (output '{key}' was modified after the stage wrote it)",
                    hint="re-run the stage that wrote this folder (recipes: `bertopt run --force`)",
                )
    return art


# The manifest's fields and the JSON types bertopt writes for them (None where a field may be null);
# a manifest of another shape is the user's file, refused naming the field, not a traceback later.
def user_path(p: Path) -> Path:
    """The output folder the user named for a path inside a stage's temporary folder (``.OUT.tmp-PID-HEX/f``
    -> ``OUT``), for messages; other paths as they are."""
    for q in (Path(p), *Path(p).parents):
        if q.name.startswith(".") and ".tmp-" in q.name:
            return q.parent / q.name[1:q.name.rindex(".tmp-")]
    return Path(p)


def check_onnx_readable(path: Path, where: str = "") -> None:
    """A model file that does not parse as ONNX (its sha256 may still match: a bad file can be signed
    as well as a good one) is a user error naming it; ``where`` says which artifact listed it."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise BertoptError(f"{path}: not a readable ONNX model{where} ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                           hint="re-run the stage that wrote it, or re-export the model") from None
    from bertopt.graph import external_data_files

    external_data_files(path, m, where)




# --------------------------------------------------------------------------------------- writing
@functools.cache
def code_digest() -> str:
    """sha256 (16 hex) of bertopt's own source files: part of every fingerprint, so an artifact made by
    other code (a pass changed, the version not bumped) is rebuilt instead of served as up to date."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def fingerprint(stage: str, inputs: dict[str, dict], params: dict) -> str:
    return sha256_json({"stage": stage, "inputs": {k: v.get("sha256") for k, v in inputs.items()}, "params": params, "v": __version__,
                        "code": code_digest()})


def describe_input(path: str | Path) -> dict:
    """Path + sha256 of one stage input (a file, a folder, or an artifact folder's model output)."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        m = read_manifest(p / MANIFEST)
        # An artifact is identified by its fingerprint + output hashes, cheaper than rehashing.
        return {"path": str(p.resolve()), "sha256": sha256_json({"fp": m.get("fingerprint"), "out": m.get("outputs")})}
    return {"path": str(p.resolve()), "sha256": sha256_path(p)}


def describe_data(path: Path) -> dict:
    """:func:`describe_input` of a data file (training/eval text) that must exist."""
    if not Path(path).is_file():
        raise BertoptError(f"{path}: no such data file", hint="pass a .txt (one text per line), .csv, .tsv or .jsonl file")
    return describe_input(path)


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no bytes stored twice), a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _portable(entry: dict, out: Path) -> dict:
    """An input inside the artifact's own workdir (a sibling step of a recipe) is recorded relative to
    the artifact (``../export``), so a copied ``runs/`` folder still resolves its lineage; anything
    else (the base model, data files) stays absolute. The fingerprint uses only the sha256s."""
    p = entry.get("path") if isinstance(entry, dict) else None
    if not p:
        return entry
    here = Path(out).resolve()
    try:
        Path(p).relative_to(here.parent)
    except ValueError:
        return entry
    return entry | {"path": os.path.relpath(p, here)}


def input_path(art: Artifact, key: str) -> Path | None:
    """The absolute path of input ``key`` as the manifest records it (relative ones against the artifact)."""
    entry = art.manifest.get("inputs", {}).get(key)
    if not isinstance(entry, dict) or not entry.get("path"):
        return None
    p = Path(entry["path"])
    return p if p.is_absolute() else Path(os.path.normpath(art.path.resolve() / p))


def is_up_to_date(out: Path, stage: str, inputs: dict[str, dict], params: dict) -> bool:
    """True when ``out`` holds a complete, unmodified artifact with the same fingerprint."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        return False
    try:
        art = load_artifact(out, verify=True)
    except BertoptError:
        return False
    return art.manifest.get("stage") == stage and art.manifest.get("fingerprint") == fingerprint(stage, inputs, params)


def up_to_date(out: str | Path, stage: str, inputs: dict[str, dict], params: dict, force: bool) -> Artifact | None:
    """The existing artifact at ``out`` when it needs no rebuild (and ``force`` is off), else None.

    Every stage function starts with this, so a hand-chained run and a recipe run skip alike.
    """
    check_out(out)
    begin(out)
    with output_lock(Path(out)):  # another process writing `out` now: fail before the work, not after it
        restore_swapped(real_out(out))
        if force or not is_up_to_date(Path(out), stage, inputs, params):
            return None
        art = load_artifact(out)
    art.skipped = True
    return art


class ArtifactWriter:
    """Collects what a stage writes; ``manifest.json`` is written last, then the folder renamed in."""

    def __init__(self, out: Path, stage: str, inputs: dict[str, dict], params: dict):
        self.out = Path(out)
        self.stage = stage
        self.inputs = inputs
        self.params = params
        # The writer's pid is in the name: a later write removes temp folders whose owner is gone.
        self.dir = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.outputs: dict[str, dict] = {}
        self.metrics: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.model: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    def add_output(self, key: str, rel: str) -> Path:
        self.outputs[key] = {"path": rel}
        return self.dir / rel

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t, 3)

    def copy_tokenizer(self, src: Path | None) -> None:
        if src is None or not Path(src).is_dir():
            return
        dst = self.dir / TOKENIZER_DIR
        dst.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, dst / name)
        if (Path(src) / "config.json").is_file():
            shutil.copy2(Path(src) / "config.json", dst / "config.json")

    def manifest(self) -> dict:
        for entry in self.outputs.values():
            f = self.dir / entry["path"]
            if f.is_file():
                entry["sha256"] = sha256_file(f)
        self.timings["total"] = round(time.perf_counter() - self._t0, 3)
        return {
            "bertopt_version": __version__,
            "bertopt_code": code_digest(),
            "stage": self.stage,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "inputs": {k: _portable(v, self.out) for k, v in self.inputs.items()},
            "params": self.params,
            "fingerprint": fingerprint(self.stage, self.inputs, self.params),
            "tools": tool_versions(),
            "model": self.model,
            "outputs": self.outputs,
            "metrics": self.metrics,
            "timings": self.timings,
            **self.extra,
        }


@contextlib.contextmanager
def write_artifact(out: str | Path, stage: str, inputs: dict[str, dict], params: dict) -> Iterator[ArtifactWriter]:
    """``with write_artifact(out, "fuse", inputs, params) as w: ...write into w.dir...``

    On success the manifest is written and the temporary folder replaces ``out``; on any exception
    the temporary folder is removed and ``out`` (if it existed) is left as it was. While it runs, the
    process holds an exclusive lock on ``out`` (a second writer fails at once, naming it), and it
    first removes temporary folders that killed writers of ``out`` left behind.
    """
    named, out = Path(out), real_out(out)
    check_out(out)
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise BertoptError(
            f"{out}: exists and is not a bertopt artifact folder; refusing to replace it",
            hint="choose another --out folder, or remove this one",
        )
    _os_call(out, "create its parent folder", lambda: out.parent.mkdir(parents=True, exist_ok=True))
    with output_lock(out):
        remove_stale_temps(out)
        if named != out:  # what older versions left beside the link (they replaced it)
            remove_stale_temps(named)
        w = ArtifactWriter(out, stage, inputs, params)
        _os_call(out, "create a temporary folder beside it", lambda: w.dir.mkdir(parents=True))
        try:
            yield w
            manifest = w.manifest()
            tmp = w.dir / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            os.replace(tmp, w.dir / MANIFEST)
            old = None
            if out.exists():
                old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(out, old)
            os.replace(w.dir, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            shutil.rmtree(w.dir, ignore_errors=True)
            if e.errno in DISK_ERRNOS:
                raise os_error(out, "write the artifact", e) from None
            raise
        except BaseException:
            shutil.rmtree(w.dir, ignore_errors=True)
            raise
