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

import atexit
import contextlib
import datetime as _dt
import errno
import glob
import functools
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from bertopt import __version__
from bertopt.errors import BertoptError

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
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "onnx-graphsurgeon", "tensorrt", "nvidia-modelopt"):
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
        _check_onnx_readable(path)
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


_check_onnx_readable = check_onnx_readable


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
def scratch_folder(out: str | Path, what: str) -> Iterator[Path]:
    """A working folder beside ``out`` (``.OUT.tmp-PID-WHAT-HEX``), removed when the block ends however it
    ends; one a SIGKILL leaves is removed by the next write to ``out`` (its pid is dead), like a stage's own."""
    out = real_out(out)
    _os_call(out, "create its parent folder", lambda: out.parent.mkdir(parents=True, exist_ok=True))
    d = out.parent / f".{out.name}.tmp-{os.getpid()}-{what}-{uuid.uuid4().hex[:8]}"
    _os_call(out, "create a working folder beside it", lambda: d.mkdir())
    try:
        yield d
    finally:
        forget_outputs_under(d)
        shutil.rmtree(d, ignore_errors=True)


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


# --------------------------------------------------------------------------------------- output paths
# OSErrors that say something about the user's disk or permissions, not about bertopt's code: met while
# a stage writes into its temporary folder, they become a user error (the CLI boundary also translates
# them, plus the path errors below, when they escape elsewhere).
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
PATH_ERRNOS = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENAMETOOLONG}


def os_error(path: Path, doing: str, e: OSError) -> BertoptError:
    """A user-facing error for an OSError met while writing ``path``."""
    hints = {
        errno.ENOSPC: "the disk is full: free some space (or write elsewhere with -o) and run again",
        errno.EDQUOT: "the disk quota is exhausted: free some space (or write elsewhere with -o) and run again",
        errno.EROFS: "that file system is read-only: choose an output folder on a writable disk (-o)",
        errno.EACCES: "you may not write there: choose an output folder you own (-o)",
        errno.EPERM: "you may not write there: choose an output folder you own (-o)",
        errno.ENOENT: "that folder does not take new files (e.g. /proc): choose an output folder on a normal disk (-o)",
    }
    where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    return BertoptError(f"{path}: cannot {doing}: {e.strerror or e}{where}",
                        hint=hints.get(e.errno, "choose an output folder in a writable directory (-o)"))


def _os_call(out: Path, doing: str, fn) -> Any:
    try:
        return fn()
    except OSError as e:
        raise os_error(out, doing, e) from None


def check_out(out: str | Path) -> None:
    """Cheap checks on an output folder before any work: not a file, no file on the way to it."""
    out = Path(out)
    if out.is_file():
        raise BertoptError(f"{out}: is a file, not an artifact folder; refusing to replace it",
                           hint="choose a folder name for the output (-o), or remove that file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BertoptError(f"{out}: cannot be created: {parent} is a file, not a folder",
                                   hint="choose an output folder whose parents are folders (-o)")
            break


_LOCKS: dict[Path, int] = {}  # output folder -> fd of its lock file, held by this process


def _lock_key(out: Path) -> Path:
    return Path(os.path.abspath(real_out(out)))


def real_out(out: str | Path) -> Path:
    """The folder an output path names: for ``-o LINK`` (a symlink) the folder it points to, so that the
    artifact is written through the link (the link stays a link, the bytes land where it points)."""
    out = Path(out)
    return Path(os.path.realpath(out)) if os.path.islink(out) else out


def acquire_lock(out: Path) -> bool:
    """Take the exclusive lock on ``out`` (``fcntl.flock`` on ``.<name>.lock`` beside it, non-blocking);
    True when newly taken, False when this process holds it already. Another holder -> BertoptError."""
    key = _lock_key(out)
    if key in _LOCKS or os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes (and locks)
        return False
    if not key.parent.is_dir():
        _os_call(key, "create its parent folder", lambda: key.parent.mkdir(parents=True, exist_ok=True))
    busy = BertoptError(f"another bertopt process is writing {out}",
                        hint="wait for it to finish, or write to another folder (-o); two runs must not write the same output at once")
    _LOCKS[key] = flock_file(key.parent / f".{key.name}.lock", f"{os.getpid()}\n", lambda _: busy, key)
    return True


def flock_file(lock: Path, holder: str, busy: Callable[[str], BertoptError], about: Path) -> int:
    """An exclusive, non-blocking ``flock`` on the file ``lock`` (created), ``holder`` written into it; the fd.
    Held elsewhere -> ``busy(what the holder wrote)``. The holder removes the file when it releases it; a
    process that opened the file just before retries on the new one (the inode check), so two processes
    never both hold the lock. Closing the fd (or the process ending, however it ends) releases it."""
    import fcntl

    while True:
        fd = _os_call(about, "create its lock file", lambda: os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.read(fd, 4096).decode("utf-8", "replace")
            finally:
                os.close(fd)
            raise busy(text) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
    return fd


def release_lock(out: Path) -> None:
    key = _lock_key(out)
    fd = _LOCKS.pop(key, None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(key.parent / f".{key.name}.lock")
    os.close(fd)


@atexit.register
def _release_all_locks() -> None:
    for key in list(_LOCKS):
        release_lock(key)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the lock on ``out`` for the block (re-entrant: a holder's inner block keeps it)."""
    taken = acquire_lock(Path(out))
    try:
        yield
    finally:
        if taken:
            release_lock(Path(out))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _stale(out: Path, kind: str, legacy_age: float) -> list[Path]:
    """The ``.<name>.<kind>-*`` entries beside ``out`` whose writer is gone (see :func:`remove_stale_temps`)."""
    found = []
    for p in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
        pid_s, sep, _ = p.name[len(f".{out.name}.{kind}-"):].partition("-")
        if sep and pid_s.isdigit():
            stale = not _pid_alive(int(pid_s))
        else:
            try:
                stale = time.time() - p.stat().st_mtime > legacy_age
            except OSError:
                continue
        if stale:
            found.append(p)
    return found


def restore_swapped(out: Path, legacy_age: float = 3600.0) -> Path | None:
    """A writer killed between the two renames of its swap left ``out`` missing and the complete old
    artifact in ``.<name>.old-*``: move that back to ``out`` (the newest, if several) before any other
    work, so that a second interrupted run cannot lose it. Call it while holding ``output_lock(out)``."""
    out = Path(out)
    if os.path.lexists(out):
        return None
    olds = [p for p in _stale(out, "old", legacy_age) if p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file()]
    if not olds:
        return None
    old = max(olds, key=lambda p: p.stat().st_mtime)
    os.replace(old, out)
    from bertopt.ui import note

    note(f"restored {out} from {old.name}, where a run killed while replacing it had left it")
    return old


def remove_stale_temps(out: Path, legacy_age: float = 3600.0) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.<name>.old-*`` folders beside ``out`` whose writer is gone.

    Each is named ``.<name>.tmp-<pid>-<random>``: removed when no process ``pid`` is alive (never a
    live writer's). Folders named by older bertopt versions carry no pid: removed once untouched for
    ``legacy_age`` seconds. Call it while holding ``output_lock(out)``.
    """
    out = Path(out)
    restore_swapped(out, legacy_age)
    removed = []
    for kind in ("tmp", "old"):
        for p in _stale(out, kind, legacy_age):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        from bertopt.ui import note

        note(f"removed {len(removed)} temporary folder(s) that an interrupted run left beside {out}")
    return removed


# --------------------------------------------------------------------------------------- interrupts
# What the running command is writing, for the ``interrupted:`` message (Ctrl-C).
ACTIVE_OUTPUTS: list[Path] = []
KEPT: dict[str, str] = {}  # key (e.g. a checkpoint folder) -> what is kept there


def begin(out: str | Path) -> None:
    """Record that this process is about to (re)write ``out`` (the stages do it in ``up_to_date``)."""
    p = Path(out)
    if p not in ACTIVE_OUTPUTS:
        ACTIVE_OUTPUTS.append(p)


def forget_outputs_under(base: str | Path) -> None:
    """Drop outputs below ``base`` (a temporary folder a stage wrote for itself) from what ``interrupted:`` reports."""
    b = Path(base)
    ACTIVE_OUTPUTS[:] = [p for p in ACTIVE_OUTPUTS if b != p and b not in p.parents]


def keep_note(key: str, msg: str | None) -> None:
    """Something an interrupted run leaves on purpose (e.g. a QAT checkpoint), said on Ctrl-C; None: no longer."""
    if msg is None:
        KEPT.pop(key, None)
    else:
        KEPT[key] = msg


def interrupted_message() -> str:
    kept = "".join(f"; {k}" for k in KEPT.values())
    if not ACTIVE_OUTPUTS:
        return "interrupted: nothing was written" + kept
    out = ACTIVE_OUTPUTS[-1]
    state = f"existing {out} unchanged" if (out / MANIFEST).is_file() else f"{out} was not created"
    done = [str(p) for p in ACTIVE_OUTPUTS[:-1] if (p / MANIFEST).is_file()]
    msg = f"interrupted: no partial artifact was left; {state}"
    if done:
        msg += "; finished before: " + ", ".join(done)
    return msg + kept
