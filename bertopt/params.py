"""Types with ranges for the stages' options classes (pydantic ``Annotated`` constraints, ``bertopt/options.py``).

The CLI, the recipe runner and Python callers all validate through those classes (``"64"`` -> 64,
``"2e-5"`` -> 2e-05, ``"false"`` -> False), so a value a stage would reject is an error naming the
field before any work starts. Choices are ``Literal[...]`` types beside them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]  # (0, 1)
HalfOpenFraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)
UnitInterval = Annotated[float, Field(ge=0, le=1)]  # [0, 1]
Cosine = Annotated[float, Field(ge=-1, le=1)]
Percentile = Annotated[float, Field(gt=0, le=100)]
MaxLength = Annotated[int, Field(ge=8)]
Opset = Annotated[int, Field(ge=14, le=21)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Sizes = Annotated[list[PositiveInt], Field(min_length=1)]  # e.g. bench's batch sizes
# A training run longer than this is a typo (``--epochs 1e9``), not a plan: refused before any work.
MAX_STEPS = 10_000_000
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Epochs = Annotated[float, Field(gt=0, le=10_000)]


# ---------------------------------------------------------------------------------------------------
# One vocabulary: options renamed so that one concept has one name in every command and recipe.
# stage -> {old name: new name}. The old spelling still works for one release (hidden CLI alias
# ``--old-name``, recipe key ``old_name``, Python keyword) and prints a deprecation note once.
# README "Option names" lists them; tests/test_vocabulary.py checks every alias still works.
RENAMED: dict[str, dict[str, str]] = {
    "calibrate": {"include_bmm": "quantize_bmm",          # as qat's --quantize-bmm and calibrate's --quantize-head
                  "report": "sensitivity_report"},        # --report is bench's HTML folder
    "qat": {"labels_column": "label_column",                # as every other command's --label-column
            "limit": "samples",                             # --samples = how many texts of --data are used
            "warmup": "warmup_ratio"},                      # --warmup is bench's untimed calls; this is a fraction of the steps
    "compress": {"labels_column": "label_column", "limit": "samples", "warmup": "warmup_ratio"},
}

_NOTED: set[tuple[str, str]] = set()


def deprecated_name(old: str, new: str, where: str = "") -> None:
    """Tell the user (once per process and name) that ``old`` is now ``new``; goes to stderr even with --quiet."""
    import sys

    if (old, new) in _NOTED:
        return
    _NOTED.add((old, new))
    at = f"{where}: " if where else ""
    print(f"note: {at}{old} is now {new}; the old name still works in this release and goes away in the next",
          file=sys.stderr, flush=True)
