"""Types with ranges for the stage functions' options (pydantic ``Annotated`` constraints).

The recipe runner validates a step's keys against its stage function's annotations and passes the
validated, converted values on (``"64"`` -> 64, ``"2e-5"`` -> 2e-05, ``"false"`` -> False), so a value
a stage would reject is an error naming the recipe file and field before any step runs. Choices are
``Literal[...]`` annotations next to the tuples the stages check (``Literal[TARGETS]``).
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
