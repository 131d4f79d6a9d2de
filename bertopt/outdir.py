"""Output folders: disk and path errors as user errors, the per-folder write lock, the temporary
folders that killed writers leave, and what Ctrl-C reports (moved out of ``artifacts.py``)."""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from bertopt.errors import BertoptError

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
    from bertopt.artifacts import MANIFEST

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
    from bertopt.artifacts import MANIFEST

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
