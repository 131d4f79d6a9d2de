"""Stage options written once: one typed object per stage that the CLI, the recipe runner and the manifest read.

A stage's options are a :class:`StageOptions` subclass (pydantic v2, frozen, unknown keys refused).
Each field is declared with :func:`opt` (default, help text, help panel, CLI spelling); its type
carries the range (``bertopt.params``: ``PositiveInt``, ``Cosine``, ...) or the choices (``Literal``).
Rules between fields are ``@model_validator(mode="after")`` methods raising ``BertoptError``.

- The CLI command is generated from the class (``bertopt.cli.options.command_from``).
- A recipe step is validated by ``parse(step_keys, where="<file>: steps[i] (stage)")``.
- Python callers keep passing keywords: ``run_qat(m, out, data=..., epochs=2)`` parses them.
- ``params()`` is what goes into the manifest's ``params`` (and so into the fingerprint).

Whoever gave a bad value gets one ``BertoptError`` naming the field their way: ``qat --epochs`` on the
CLI, ``r.yaml: steps[1] (qat).epochs`` in a recipe, ``run_qat(epochs=...)`` from Python.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any, ClassVar, Literal, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from bertopt.errors import QUOTE_LIMIT, BertoptError, clip, quote
from bertopt.params import (RENAMED, Cosine, PositiveInt, deprecated_name)

CLI = "cli"  # parse(..., where=CLI): the values came from the command line, errors name --flags


def opt(default: Any = ..., help: str = "", *, panel: str | None = None, flag: str | list[str] | None = None, cli: bool = True,  # noqa: A002
        split: bool = False, hint: str | None = None, fingerprint: bool | str = True) -> Any:
    """A field of a :class:`StageOptions`: ``pydantic.Field`` plus what the CLI needs.

    - ``panel``: the ``--help`` panel it is listed in;
    - ``flag``: the CLI spelling when it is not ``--kebab-name`` (a bool's ``--x/--no-x``), e.g. ``"--quantize-bmm"``,
      or several (``["--threads", "-t"]``);
    - ``cli=False``: not a CLI option (set by the command itself or only from recipes/Python);
    - ``split``: a list option that also takes commas (``--exclude a,b --exclude c``);
    - ``hint``: the hint printed with a bad value (default: the field's range, if it has one);
    - ``fingerprint``: whether it enters the manifest's ``params`` (and so the fingerprint): True, False
      (no effect on the artifact, e.g. ``threads``), or ``"given"`` (only when set: not None or empty).
    ``{stage}`` in the help text is replaced by the stage's name.
    """
    extra = {"panel": panel, "flag": flag, "cli": cli, "split": split, "hint": hint, "fingerprint": fingerprint}
    return Field(default, description=help,
                 json_schema_extra={k: v for k, v in extra.items() if v not in (None, False) or k in ("cli", "fingerprint")})


def meta(field: FieldInfo) -> dict:
    """What :func:`opt` recorded beside the pydantic field (panel, flag, cli, split, hint)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return {"panel": None, "flag": None, "cli": True, "split": False, "hint": None, "fingerprint": True, **extra}


def bounds(field: FieldInfo) -> dict[str, Any]:
    """The field's numeric limits ``{"ge": 1}``, ``{"gt": 0, "lt": 1}``, ... (also inside ``X | None``)."""
    found: dict[str, Any] = {}

    def take(items) -> None:
        for m in items:
            if isinstance(m, FieldInfo):
                take(m.metadata)
            for k in ("ge", "gt", "le", "lt"):
                if getattr(m, k, None) is not None:
                    found[k] = getattr(m, k)

    take(field.metadata)
    for arg in typing.get_args(field.annotation):  # Optional[Annotated[int, Field(ge=1)]]
        if typing.get_origin(arg) is typing.Annotated:
            take(typing.get_args(arg)[1:])
    return found


def interval(b: dict[str, Any]) -> str | None:
    """``{"gt": 0, "lt": 1}`` -> ``(0, 1)``; one-sided limits -> ``>= 1``; None without limits."""
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
    if lo and hi:
        return f"{lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + str(lo[1])
    if hi:
        return ("<= " if hi[0] == "]" else "< ") + str(hi[1])
    return None


class StageOptions(BaseModel):
    """Base of every stage's options. ``STAGE`` is the stage name; ``PANELS`` orders the help panels."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # nan/inf in any float option: refused by name
    STAGE: ClassVar[str] = ""
    PANELS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def with_default(cls, name: str, default: Any) -> Any:
        """A subclass's own default for an inherited field, keeping its help and panel:
        ``epochs: PositiveFloat = TrainingOptions.with_default("epochs", 3.0)``."""
        f = copy.copy(cls.model_fields[name])
        f.default = default
        return f

    # ---------------------------------------------------------------------------------- parsing
    @classmethod
    def parse(cls, kwargs: dict[str, Any], where: str | None = None):
        """Validate ``kwargs`` into the options object. ``where`` says who wrote them, for the
        error: None (Python keywords), :data:`CLI`, or a recipe place ``"<file>: steps[i] (stage)"``.
        Old names (``bertopt.params.RENAMED``) are mapped to the new ones with a note."""
        kwargs = cls._renamed(dict(kwargs), where)
        try:
            return cls(**kwargs)
        except pydantic.ValidationError as e:
            raise cls._user_error(e, where) from None
        except BertoptError as e:  # a rule between fields (a model validator)
            if where in (None, CLI):
                raise
            raise BertoptError(f"{where}: {e.message}", hint=e.hint) from None

    @classmethod
    def of(cls, options: StageOptions | None, kwargs: dict[str, Any]):
        """A stage function's options: the object it was given (``options=``), or its keywords parsed
        (a Python caller). ``run_x(m, out, options=o, epochs=2)`` is refused (which one would win?)."""
        if options is None:
            return cls.parse(kwargs)
        if kwargs:
            raise TypeError(f"run_{cls.STAGE}() takes options= or option keywords, not both (got {', '.join(kwargs)})")
        if not isinstance(options, cls):
            raise TypeError(f"run_{cls.STAGE}(options=...) takes a {cls.__name__}, not a {type(options).__name__}")
        return options

    @classmethod
    def _renamed(cls, kwargs: dict, where: str | None) -> dict:
        for old, new in RENAMED.get(cls.STAGE, {}).items():
            if old not in kwargs:
                continue
            if new in kwargs:
                raise BertoptError(f"{cls._place(old, where)}: both '{_spell(old, where)}' (the old name) and '{_spell(new, where)}' given",
                                   hint=f"keep '{_spell(new, where)}'")
            deprecated_name(*(f"'{n}'" if where not in (None, CLI) else _spell(n, where) for n in (old, new)), cls._who(where))
            kwargs[new] = kwargs.pop(old)
        return kwargs

    @classmethod
    def _who(cls, where: str | None) -> str:
        return f"run_{cls.STAGE}" if where is None else f"bertopt {cls.STAGE}" if where == CLI else where

    @classmethod
    def _place(cls, name: str, where: str | None) -> str:
        """Where the field is, as the user wrote it: ``qat --epochs``, ``run_qat``, ``r.yaml: steps[1] (qat).epochs``."""
        if where is None:
            return f"run_{cls.STAGE}"
        if where == CLI:
            return f"{cls.STAGE} {_spell(name, where)}"
        return f"{where}.{name}"

    @classmethod
    def _user_error(cls, e: pydantic.ValidationError, where: str | None) -> BertoptError:
        """One error for the first thing wrong (the others are named), e.g. ``qat --epochs: must be
        greater than 0 (got -1.0)``, ``run_qat: epochs=-1.0: must be greater than 0``."""
        errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")  # a misspelt key first: it explains a "missing" one
        first = errors[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        place, kind, value = cls._place(name, where), first["type"], first.get("input")
        doc = f"`bertopt {cls.STAGE} --help` lists the options" + (", with '_' for '-'" if where != CLI else "")
        if kind == "extra_forbidden":
            text = f"{place}: unknown option '{name}'" if where is None else f"{place}: unknown option for stage '{cls.STAGE}'"
            return BertoptError(text,
                                hint=f"'{cls.STAGE}' takes: " + ", ".join(sorted(cls.model_fields)) + f" ({doc})")
        if kind == "missing":
            return BertoptError(f"{place}: {name}= missing (required)" if where is None else f"{place}: missing (required)", hint=doc)
        msg = first["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        field = cls.model_fields.get(name)
        hint = meta(field)["hint"] if field else None
        rng = interval(bounds(field)) if field else None
        if hint is None and rng:
            hint = f"{_spell(name, where)} takes a number {'in ' if rng[0] in '[(' else ''}{rng}"
        msg = clip(msg, QUOTE_LIMIT)  # pydantic's message may quote the input too
        text = f"{place}: {name}={quote(value)}: {msg}" if where is None else f"{place}: {msg} (got {quote(value)})"
        more = list(dict.fromkeys(_spell(str(x["loc"][0]), where) for x in errors[1:] if x["loc"] and x["loc"][0] != name))
        if more:
            text += "; also wrong: " + ", ".join(more)
        return BertoptError(text, hint=hint or doc)

    # ---------------------------------------------------------------------------------- manifest
    def params(self, **resolved: Any) -> dict[str, Any]:
        """The manifest's ``params`` (they make the fingerprint): the fields whose ``fingerprint`` flag
        lets them in, after :meth:`_effective`, with ``resolved`` values (what the stage decided from
        its input, e.g. qat's task) on top."""
        dump = self.model_dump(mode="json")
        p = {}
        for name, f in type(self).model_fields.items():
            rule = meta(f)["fingerprint"]
            if rule is False or (rule == "given" and dump[name] in (None, "", [])):
                continue
            p[name] = dump[name]
        return self._effective(p) | resolved

    def _effective(self, p: dict[str, Any]) -> dict[str, Any]:
        """The rules between fields for ``params``: None-out or drop what has no effect given the others."""
        return p

    @classmethod
    def cli_fields(cls) -> dict[str, FieldInfo]:
        return {n: f for n, f in cls.model_fields.items() if meta(f)["cli"]}


def _spell(name: str, where: str | None) -> str:
    if where == CLI:
        return "--" + name.replace("_", "-")
    return f"{name}=" if where is None else name


def plain_type(annotation: Any) -> Any:
    """The annotation without pydantic's constraints (``Annotated[int, Field(ge=1)] | None`` -> ``Optional[int]``), for typer."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return plain_type(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [plain_type(a) for a in typing.get_args(annotation)]
        return Union[tuple(args)]  # noqa: UP007 - built at run time
    if origin is list:
        return list[plain_type(typing.get_args(annotation)[0])]
    return annotation


# ------------------------------------------------------------------------------------------ shared groups
POOLING = Literal["auto", "mean", "cls", "none"]


class BudgetOptions(StageOptions):
    """A fidelity/accuracy budget on held-out text (calibrate and qat): what the model written must meet."""

    min_cosine: Cosine | None = opt(None, "Budget: min cosine of the output vs FP32 over held-out texts; exit 3 with the best model if "
                                          "nothing meets it.", panel="Checks and budget")
    max_accuracy_drop: typing.Annotated[float, Field(ge=0, le=100)] | None = opt(
        None, "Budget: classifier accuracy on --eval at most this many points below FP32.", panel="Checks and budget")
    eval: str | None = opt(None, "Held-out text for the budget (default: --eval-samples texts of --data, never trained or calibrated on).",
                           panel="Checks and budget")
    eval_samples: PositiveInt = opt(64, "Without --eval: texts of --data held out for the budget.", panel="Checks and budget")
    max_float: PositiveInt | None = opt(None, "Budget search (calibrate's): at most this many GEMMs back in float (default: a quarter).",
                                        panel="Checks and budget")

    @property
    def budget(self) -> bool:
        return self.min_cosine is not None or self.max_accuracy_drop is not None
