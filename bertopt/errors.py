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
