"""bertopt's logger, as Polygraphy's ``G_LOGGER``: one ``logging`` logger (``"bertopt"``) for the whole
package, printing through ``ui.console`` (stderr, silenced by ``-q``), so a line reads the same as a note.

``-v/--verbose`` sets its level once (:func:`set_verbose`, called by the CLI before a command runs);
stages log what only ``--verbose`` shows with ``logger.debug`` and never take a ``verbose`` argument.
Python callers: ``bertopt.log.set_verbose()`` or ``logging.getLogger("bertopt").setLevel(logging.DEBUG)``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("bertopt")


class _ConsoleHandler(logging.Handler):
    """A record -> one plain line on ``ui.console`` (no level, time or markup: as ``ui.note`` prints)."""

    def emit(self, record: logging.LogRecord) -> None:
        from bertopt import ui

        try:
            ui.console.print(self.format(record), markup=False, style="yellow" if record.levelno >= logging.WARNING else None)
        except Exception:  # noqa: BLE001 - logging's contract: a failing handler reports, never raises
            self.handleError(record)


if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):  # a reload must not print every line twice
    logger.addHandler(_ConsoleHandler())
logger.setLevel(logging.INFO)
logger.propagate = False  # the root logger's handlers (a user's basicConfig) would print each line again


def set_verbose(on: bool = True) -> None:
    """``-v/--verbose``: show ``logger.debug`` lines too (``on=False``: back to the default, INFO)."""
    logger.setLevel(logging.DEBUG if on else logging.INFO)


def verbose() -> bool:
    """Whether ``--verbose`` is on (for output that is not a line, e.g. all rows of a table instead of ten)."""
    return logger.isEnabledFor(logging.DEBUG)
