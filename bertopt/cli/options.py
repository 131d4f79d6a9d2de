"""Options shared by the subcommands, as ``Annotated`` aliases (one definition, one spelling), and
:func:`command_from`, which builds a stage command from the stage's options class."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated, Callable, List, Optional

import typer

Out = Annotated[Path, typer.Option("--out", "-o", help="Output artifact folder (replaced atomically).")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write machine-readable results to this JSON file ('-' for stdout).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say more, e.g. which passes fired zero times and why.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Redo the work even when the output is up to date.")]
QUIET_HELP = "Print only errors and the results (no progress, no notes)."
# Every command declares ``quiet: Quiet = False`` (stage commands and run also ``verbose: Verbose``); BertoptCommand
# (cli/command.py) applies both before the command runs: -v sets bertopt.log's level, nothing is passed down.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)]


def split_items(values: list[str] | None) -> list[str] | None:
    """A repeatable option that also takes commas: ``--exclude a --exclude b,c`` -> ['a', 'b', 'c'];
    None when not given (``--exclude ''`` gives [], i.e. "none")."""
    if values is None:
        return None
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


# ------------------------------------------------------------------------------------------------
# Commands generated from a stage's options class (bertopt/options.py): one option per field.
def panels(options_cls) -> dict[str, list[str]]:
    """Help panel -> the fields listed in it, panels in the class's ``PANELS`` order, then as they come."""
    from bertopt.options import meta

    out: dict[str, list[str]] = {p: [] for p in options_cls.PANELS}
    for name, f in options_cls.cli_fields().items():
        out.setdefault(meta(f)["panel"] or "Options", []).append(name)
    return {p: names for p, names in out.items() if names}


def _option(options_cls, name: str, field) -> tuple[object, object]:
    """(annotation for typer, default) of one field's CLI option."""
    from pydantic_core import PydanticUndefined

    from bertopt.options import meta, plain_type

    m = meta(field)
    kind = plain_type(field.annotation)
    decls = list(m["flag"]) if isinstance(m["flag"], (list, tuple)) else [m["flag"]] if m["flag"] else []
    default = inspect.Parameter.empty if field.default is PydanticUndefined else field.default
    if m["split"]:
        kind = Optional[List[str]]  # repeatable, commas split by split_items before validation
        if isinstance(default, list):
            default = [str(v) for v in default]  # what the command line gives: split and converted as typed values are
    choices = _choices(kind)
    if choices:  # a Literal: shown as its choices, checked by the options class (the same error and exit 1 as a recipe's)
        kind = Optional[str] if type(None) in typing.get_args(kind) else str
    info = typer.Option(*decls, help=(field.description or "").replace("{stage}", options_cls.STAGE), rich_help_panel=m["panel"],
                        metavar="|".join(choices) if choices else None)
    return Annotated[kind, info], default


def _choices(kind) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) type; () for any other type."""
    for k in (kind, *typing.get_args(kind)):
        if typing.get_origin(k) is typing.Literal:
            return tuple(str(v) for v in typing.get_args(k))
    return ()


def command_from(stage: str, *, arguments: dict[str, object], extra: dict[str, tuple[object, object]] | None = None,
                 out: object = Out, call: Callable | None = None) -> Callable:
    """The typer callback of ``stage``'s command, built from its options class (:mod:`bertopt.stages`):

    - ``arguments``: the positional arguments, name -> help text (a str) or an ``Annotated[..., typer.Argument(...)]``;
    - one ``--kebab-name`` option per CLI field (help, panel, bool ``--x/--no-x`` or the field's ``flag``,
      list fields repeatable, ``Literal`` fields as choices), then ``extra`` command-only options
      (name -> (annotation, default)), then ``--out``, ``--force``, ``--verbose``, ``--quiet``;
    - it parses the fields into the options object (``where=CLI``: errors name the --flags) and calls
      ``run(*arguments, out, options=..., force=, **extra)`` (``run``: the stage function,
      imported when the command runs, so ``--help`` stays light), or
      ``call(run, arguments, out, options, extra, force=)`` when given.
    The range of a number (from the field's type) is shown in ``--help`` as click shows its own.
    """
    from bertopt import stages
    from bertopt.options import CLI, bounds, meta

    options_cls = stages.options(stage)
    fields = options_cls.cli_fields()
    order = [n for names in panels(options_cls).values() for n in names]
    params, hints = [], {}
    for name, spec in arguments.items():
        ann = spec if not isinstance(spec, str) else Annotated[str, typer.Argument(help=spec)]
        params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ann))
    for name in order:
        ann, default = _option(options_cls, name, fields[name])
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default))
    for name, (ann, default) in (extra or {}).items():
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default))
    if out is not None:
        params.append(inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=out))
    for name, ann in (("force", Force), ("verbose", Verbose), ("quiet", Quiet)):
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=False))
    split = [n for n in order if meta(fields[n])["split"]]

    def command(**kw):
        args = [kw.pop(n) for n in arguments]
        out_path = kw.pop("out") if out is not None else None
        force = kw.pop("force")
        kw.pop("quiet"), kw.pop("verbose")  # applied by BertoptCommand.invoke
        more = {n: kw.pop(n) for n in (extra or {})}
        for n in split:
            kw[n] = _split(n, kw[n], fields[n])
        options = options_cls.parse(kw, where=CLI)
        target = stages.get(stage)  # imported now, not when the CLI starts
        if call is not None:
            return call(target, args, out_path, options, more, force=force)
        return target(*args, *([out_path] if out is not None else []), options=options, force=force, **more)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    for name in order:
        rng = bounds(fields[name])
        if rng:
            hints[name] = _click_range(rng)
    command.panels = panels(options_cls)
    command.ranges = hints
    return command


def _split(name: str, values: list[str] | None, field) -> list | None:
    """A ``split`` field's repeated/comma-separated values; integers (``--batch 1,8``) converted here, so
    that a non-number is a usage error (exit 2) as click's own types give."""
    from bertopt.options import plain_type

    items = split_items(values)
    kinds = [a for a in typing.get_args(plain_type(field.annotation)) if typing.get_origin(a) is list] or [plain_type(field.annotation)]
    if items is None or typing.get_args(kinds[0]) != (int,):
        return items
    try:
        return [int(v) for v in items]
    except ValueError:
        raise typer.BadParameter(f"expected integers, got '{','.join(values)}'", param_hint="--" + name.replace("_", "-")) from None


def _click_range(b: dict) -> str:
    """``{"ge": 1}`` -> ``x>=1``, ``{"gt": 0, "lt": 1}`` -> ``0<x<1``: as click shows ``min=``/``max=``."""
    lo = f"{b['ge']}<=" if "ge" in b else f"{b['gt']}<" if "gt" in b else ""
    hi = f"<={b['le']}" if "le" in b else f"<{b['lt']}" if "lt" in b else ""
    if lo and not hi:
        return "x>=" + str(b["ge"]) if "ge" in b else "x>" + str(b["gt"])
    return f"{lo}x{hi}"
