"""The click command class behind every subcommand: old option names, ``-q/--quiet``, help panels.

- Old option spellings (``bertopt.params.RENAMED``) are rewritten to the new ones before parsing,
  with a deprecation note; they do not appear in ``--help``.
- ``-q/--quiet`` (``cli.options.Quiet``, declared by every command) takes effect here: it silences
  progress and notes on stderr; errors and the command's results (stdout) still print.
- ``-v/--verbose`` likewise: it sets :mod:`bertopt.log`'s level (``logger.debug`` lines show), once.
- ``--help`` groups the options into the panels a command module lists in ``PANELS`` (typer's
  ``rich_help_panel``; a command generated from an options class brings its own) and lays them out in two columns, so nothing is cut off at 80 columns
  (typer's own six-column table truncates long option names there).
"""

from __future__ import annotations

import re

from typer.core import TyperArgument, TyperCommand, TyperOption

from bertopt.cli.options import QUIET_HELP  # noqa: F401 - re-exported for main.py
from bertopt.params import RENAMED, deprecated_name

# Panels every command shares, after the command's own ones.
COMMON_PANEL = "Output and logging"
COMMON = ("out", "json_out", "force", "verbose", "quiet", "help")


def cli_name(param: str) -> str:
    return "--" + param.replace("_", "-")


def reflow(doc: str | None) -> str | None:
    """Docstring paragraphs -> one line each (typer's rich mode keeps single line breaks, which a
    narrower terminal then breaks again mid-sentence)."""
    if not doc:
        return doc
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip()))


class BertoptCommand(TyperCommand):
    stage: str = ""
    panels: dict[str, list[str]] = {}
    ranges: dict[str, str] = {}  # option -> its range as click shows one ("x>=1"), when pydantic (not click) checks it

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        where = {name: panel for panel, names in self.panels.items() for name in names}
        for p in self.params:
            if isinstance(p, TyperOption) and not p.rich_help_panel:
                p.rich_help_panel = where.get(p.name) or (COMMON_PANEL if p.name in COMMON else None)

    # --- old names ------------------------------------------------------------------------------
    @property
    def aliases(self) -> dict[str, str]:
        """'--old-name' -> '--new-name' for this command."""
        return {cli_name(old): cli_name(new) for old, new in RENAMED.get(self.stage, {}).items()}

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        aliases = self.aliases
        out = []
        for i, a in enumerate(args):
            if a == "--":
                out.extend(args[i:])
                break
            flag, eq, value = a.partition("=")
            if flag in aliases:
                deprecated_name(flag, aliases[flag], f"bertopt {self.name}")
                a = aliases[flag] + eq + value
            out.append(a)
        return super().parse_args(ctx, out)

    def invoke(self, ctx):
        from bertopt import log, ui

        if ctx.params.get("quiet"):  # every command declares `quiet: Quiet`; it takes effect here, before the stage runs
            ui.set_quiet(True)
        log.set_verbose(bool(ctx.params.get("verbose")))  # -v: the logger's level, once for the whole command
        return super().invoke(ctx)

    # --- help -------------------------------------------------------------------------------------
    def format_help(self, ctx, formatter) -> None:
        from rich.console import Console
        from rich.padding import Padding
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        console = Console(highlight=False)
        usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), self.get_usage(ctx))  # typer writes {model_dir}
        console.print(Padding(Text(usage), (1, 1, 1, 1)), style="bold")
        if self.help:
            console.print(Padding(Text(self.help), (0, 1, 1, 1)))
        groups: dict[str, list] = {}
        for p in self.get_params(ctx):
            if getattr(p, "hidden", False):
                continue
            if isinstance(p, TyperArgument):
                panel = "Arguments"
            else:
                panel = p.rich_help_panel or (COMMON_PANEL if p.name in COMMON else "Options")
            groups.setdefault(panel, []).append(p)
        order = ["Arguments", *self.panels, "Options", COMMON_PANEL]
        for panel in sorted(groups, key=lambda k: order.index(k) if k in order else len(order)):
            t = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False, expand=True)
            t.add_column(style="bold cyan", max_width=32, overflow="fold", ratio=None)
            t.add_column(ratio=1, overflow="fold")
            for p in groups[panel]:
                t.add_row(Text(_names(p, ctx)), Text(_help(p, ctx, self.ranges.get(p.name))))
            console.print(Panel(t, title=panel, title_align="left", border_style="dim"))


def _names(p, ctx) -> str:
    if isinstance(p, TyperArgument):
        return (p.metavar or p.name.upper()) + ("..." if p.nargs != 1 else "")
    longs = [o for o in p.opts if o.startswith("--")] + [o for o in p.opts if not o.startswith("--")]
    text = ", ".join(longs)
    if p.secondary_opts:
        text += " / " + ", ".join(p.secondary_opts)
    if not p.is_flag:
        text += " " + _metavar(p, ctx)
    return text


def _metavar(p, ctx) -> str:
    if p.metavar and "|" in p.metavar:  # a Literal's choices (cli/options.py); long ones are listed in the help text instead
        return p.metavar if len(p.metavar) <= 20 else "TEXT"
    kind = (p.display_type_rich(ctx=ctx) or "<str>").strip("<>").replace(" range", "")
    if "|" in kind:  # a Literal's choices, as they are typed; long ones are listed in the help text instead
        return kind.lower() if len(kind) <= 20 else "TEXT"
    if kind.startswith("list["):
        return {"str": "TEXT"}.get(kind[5:-1], kind[5:-1].upper()) + "..."
    return {"str": "TEXT"}.get(kind, kind.upper())


def _help(p, ctx, rng: str | None = None) -> str:
    bits = [" ".join((p.help or "").split())]
    if getattr(p, "required", False):
        bits.append("[required]")
    if isinstance(p, TyperOption) and not p.required and p.name != "help":
        d = p.default
        if p.is_flag and p.secondary_opts and d is not None:
            bits.append(f"[default: {(p.opts if d else p.secondary_opts)[0]}]")
        elif d not in (None, False, (), []) and not p.is_flag:
            bits.append(f"[default: {','.join(map(str, d)) if isinstance(d, (list, tuple)) else d}]")
    rng = rng or (p._get_number_range_help_str() if hasattr(p, "_get_number_range_help_str") else None)
    if rng:
        bits.append(f"[{rng}]")
    return " ".join(b for b in bits if b)


def command_class(stage: str, panels: dict[str, list[str]] | None, ranges: dict[str, str] | None = None) -> type[BertoptCommand]:
    return type(f"{stage.title()}Command", (BertoptCommand,), {"stage": stage, "panels": dict(panels or {}), "ranges": dict(ranges or {})})
