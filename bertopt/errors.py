"""The one user-facing exception family. The CLI boundary prints ``error:``/``hint:`` and exits."""

from __future__ import annotations


class BertoptError(Exception):
    """A problem with the user's input or environment: printed without a traceback, exit code 1."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class QualityGateError(BertoptError):
    """A quality gate failed (accuracy/fidelity budget exceeded): exit code 3 so CI can act on it."""

    exit_code = 3


class MissingDependencyError(BertoptError):
    """An optional heavy dependency (tensorrt, modelopt, a GPU) is absent."""


# What an error message may quote of a value the user gave, and the whole message at the CLI boundary:
# a YAML alias bomb or a 200 KB cell must not become a 300 MB error.
QUOTE_LIMIT = 200
MESSAGE_LIMIT = 4000


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters (cut with "…"); bounded work for any value."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset, r.maxfrozenset, r.maxdeque, r.maxarray = 4, 8, 8, 8, 8, 8, 8, 8
    r.maxstring = r.maxother = r.maxlong = limit
    try:
        text = r.repr(value)
    except RecursionError:  # a list that contains itself, deeper than reprlib's guard
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
