"""The ``bertopt`` command: one thin module per subcommand, no heavy imports at start-up.

A subcommand module ``bertopt/cli/<name>.py`` defines ``command`` (the typer callback). Only the
modules listed in ``COMMANDS`` are registered, each only when its module exists, so the CLI never
offers a command that is not there. Heavy libraries (torch, onnxruntime, tensorrt, modelopt) are
imported inside the stage functions, never at module top, so ``--help`` is fast and works without them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import signal
import sys
from typing import Annotated, Optional

import typer

from bertopt import __version__
from bertopt.cli.command import QUIET_HELP, command_class, reflow
from bertopt.errors import BertoptError, clip

# In pipeline order; this is also the order of `bertopt --help`.
COMMANDS = ("compress", "export", "fuse", "calibrate", "qat", "build", "bench", "run", "inspect", "compare", "report")

app = typer.Typer(
    name="bertopt",
    help="Compile BERT-family encoders to fast, accurate INT8: compress, export, fuse, calibrate, qat, build, bench, run; inspect, compare, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bertopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP + " Same as each command's -q.")] = False,
) -> None:
    """bertopt: one command per step, or one recipe for all."""
    if quiet:
        from bertopt import ui

        ui.set_quiet(True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what CI sends on cancel, what ``kill`` sends) raised where the process is, like Ctrl-C:
    the same unwinding removes temporary folders and releases locks."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def _interrupted(e: KeyboardInterrupt) -> None:
    """Say what was kept; exit 130 (Ctrl-C) or 143 (SIGTERM), the shell's codes for the two signals."""
    report_interrupt(e)
    sys.exit(143 if isinstance(e, Terminated) else 130)


def _interruptible(command):
    """Ctrl-C or SIGTERM inside a command: say what was kept, exit 130/143. (typer/click would turn the
    KeyboardInterrupt into a silent exit 130 before ``main`` could see it.)"""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as e:
            _interrupted(e)

    return run


for _name in COMMANDS:
    if importlib.util.find_spec(f"bertopt.cli.{_name}") is not None:
        _mod = importlib.import_module(f"bertopt.cli.{_name}")
        _panels = getattr(_mod, "PANELS", None) or getattr(_mod.command, "panels", None)  # generated commands carry theirs
        app.command(name=_name, help=reflow(_mod.__doc__), no_args_is_help=True,
                    cls=command_class(_name, _panels, getattr(_mod.command, "ranges", None)))(_interruptible(_mod.command))


def report_error(e: BertoptError) -> None:
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"error: {clip(e.message)}", style="bold red", markup=False)
    if e.hint:
        err.print(f"hint: {clip(e.hint)}", style="yellow", markup=False)


def report_interrupt(e: KeyboardInterrupt | None = None) -> None:
    from bertopt.outdir import interrupted_message

    msg = interrupted_message()
    if isinstance(e, Terminated):
        msg = "error: terminated (SIGTERM); " + msg
    print(msg, file=sys.stderr, flush=True)


def os_error_to_user_error(e: OSError) -> BertoptError | None:
    """Last resort at the CLI boundary: a full, read-only or forbidden disk, or a path through a file,
    is the user's environment; any other OSError is a bug and keeps its traceback."""
    from pathlib import Path

    from bertopt.outdir import DISK_ERRNOS, PATH_ERRNOS, os_error

    if e.errno not in DISK_ERRNOS | PATH_ERRNOS:
        return None
    return os_error(Path(e.filename or "?"), "write", e)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except BertoptError as e:
        report_error(e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        _interrupted(e)
    except OSError as e:
        user = os_error_to_user_error(e)
        if user is None:
            raise
        report_error(user)
        sys.exit(user.exit_code)


if __name__ == "__main__":
    main()
