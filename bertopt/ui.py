"""Terminal output shared by the stages: a stderr console and progress bars.

Stages print progress and notes to stderr so that stdout stays clean for ``--json -`` and pipes.
On a terminal, progress is rich's live bars and spinners. When stderr is not a terminal (CI logs,
``2> file``), a live bar would print nothing until the end, so the same calls print plain lines
instead: ``calibrate: pass 1 (FP32 statistics) 512/2048 (25%) 0:41`` at most every
``BERTOPT_PROGRESS_EVERY`` seconds (default 15) and once when a task finishes; a long step without
a bar (``console.status``) says when it starts and then every period that it is still running.
``set_quiet`` (``-q/--quiet``) silences all of it; errors are printed by the CLI, not here.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _period() -> float:
    try:
        return max(0.05, float(os.environ.get("BERTOPT_PROGRESS_EVERY", "15")))
    except ValueError:
        return 15.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Heartbeat:
    """Calls ``beat()`` every period on a daemon thread until stopped (a step may run minutes between updates)."""

    def __init__(self, beat) -> None:
        self._beat, self._stop = beat, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bertopt-progress")

    def _run(self) -> None:
        while not self._stop.wait(_period()):
            self._beat()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class PlainProgress:
    """The part of ``rich.progress.Progress`` the stages use, as plain lines (stderr not a terminal)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tasks: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._heart = _Heartbeat(self._beat)

    def __enter__(self) -> PlainProgress:
        self._heart.start()
        return self

    def __exit__(self, *exc) -> None:
        self._heart.stop()
        with self._lock:
            for t in self.tasks.values():
                if not t["done"] and t["printed_at"] is not None:  # a bar that stopped early (early stopping, an error)
                    self._print(t)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        tid = len(self.tasks)
        now = time.monotonic()
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": now, "printed_at": None, "done": False}
        return tid

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None, advance: float | None = None,
               description: str | None = None, **fields) -> None:
        with self._lock:
            t = self.tasks[task_id]
            if total is not None:
                t["total"] = total
            if completed is not None:
                t["completed"] = completed
            if advance:
                t["completed"] += advance
            if description is not None:
                t["description"] = description
            t["fields"].update(fields)
            finished = t["total"] is not None and t["completed"] >= t["total"]
            due = time.monotonic() - (t["printed_at"] or t["start"]) >= _period()
            if (finished and not t["done"]) or (due and not t["done"]):
                t["done"] = finished
                self._print(t)

    def _beat(self) -> None:
        with self._lock:
            now = time.monotonic()
            for t in self.tasks.values():
                if not t["done"] and now - (t["printed_at"] or t["start"]) >= _period():
                    self._print(t)

    def _print(self, t: dict) -> None:
        t["printed_at"] = time.monotonic()
        if self.console.quiet:
            return
        done, total = t["completed"], t["total"]
        count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
        status = str(t["fields"].get("status") or "")
        line = f"{t['description']} {count} {_clock(t['printed_at'] - t['start'])}" + (f" {status}" if status else "")
        print(line, file=self.console.file, flush=True)


class PlainStatus:
    """``console.status(...)`` without a terminal: a line when it starts, then one per period while it runs."""

    def __init__(self, console: Console, message: str) -> None:
        self.console, self.message = console, str(message)
        self._start = self._printed = time.monotonic()
        self._heart = _Heartbeat(self._beat)

    def __enter__(self) -> PlainStatus:
        self._say(self.message)
        self._heart.start()
        return self

    def __exit__(self, *exc) -> None:
        self._heart.stop()

    def update(self, status: str | None = None, **_) -> None:
        if status is not None and str(status) != self.message:
            self.message = str(status)
            if time.monotonic() - self._printed >= min(2.0, _period()):
                self._say(self.message)

    def _beat(self) -> None:
        self._say(f"{self.message} ... {_clock(time.monotonic() - self._start)}")

    def _say(self, line: str) -> None:
        self._printed = time.monotonic()
        if not self.console.quiet:
            print(line, file=self.console.file, flush=True)


class _Console(Console):
    def status(self, status, *args, **kwargs):
        if self.is_terminal:
            return super().status(status, *args, **kwargs)
        return PlainStatus(self, status)


# Tables are wide: when output goes to a file or CI log (no terminal), don't wrap them at 80 columns.
console = _Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def set_quiet(quiet: bool = True) -> None:
    """``-q/--quiet``: no progress, notes or step headers on stderr (errors and results still print)."""
    console.quiet = quiet


def progress(transient: bool = False) -> Progress | PlainProgress:
    """``with progress() as p: t = p.add_task("calibrating", total=n); p.advance(t)``"""
    if not console.is_terminal:
        return PlainProgress(console)
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=transient,
    )


def note(msg: str) -> None:
    console.print(msg, markup=False)


def skipped(stage: str, out) -> None:
    console.print(f"{stage}: {out} is up to date (inputs and parameters unchanged); --force redoes it", markup=False, style="dim")


def write_json(obj, path, *, stale: bool = False) -> None:
    """``--json PATH``, the same on every command: ``-`` prints to stdout, else the file is written
    atomically (a temporary sibling, then renamed). ``stale``: dated 1970, so the file does not
    satisfy a Makefile target (a failed gate's verdict: the next ``make`` reruns the step)."""
    import json
    from pathlib import Path

    if path is None:
        return
    text = json.dumps(obj, indent=2, default=str) + "\n"
    if str(path) == "-":
        print(text, end="")
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    if stale:
        os.utime(tmp, (0, 0))
    os.replace(tmp, p)
