"""Typed fields shared by the settings and the run config, and the messages their errors get.

A range is written once, here, as an `Annotated` type: the environment variable (Settings), the
run-config field (FineTuneConfig), the OpenAPI document and the CLI flags all read it from the
same pydantic metadata, so none of them can allow what another refuses.

Messages name what is wrong and what is allowed (`must be an integer between 1 and 1024`),
derived from the same metadata rather than pydantic's generic "Input should be ...".
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AfterValidator, Field, ValidationError
from pydantic.fields import FieldInfo

Backend = Literal["auto", "trl", "unsloth", "axolotl"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
# What a run trains: SFT on the final answers, DPO on (final answer, rejected round) pairs, or
# SFT and then DPO continuing the same adapter.
Objective = Literal["sft", "dpo", "sft+dpo"]
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)

# Where a run's adapter starts: a fresh LoRA, or the active adapter's weights (warm start).
InitFrom = Literal["base", "active"]

MAX_STEPS = 10_000_000  # every "every N steps" knob; beyond this a run would never end


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _module_names(value: list[str]) -> list[str]:
    if not value or not all(name.isidentifier() for name in value):
        raise ValueError(MODULES_MESSAGE)
    return value


MODULES_MESSAGE = "must be a non-empty list of module names such as ['q_proj', 'v_proj']"

NonEmptyText = Annotated[str, AfterValidator(_non_blank), Field(min_length=1)]
ModuleNames = Annotated[list[str], AfterValidator(_module_names), Field(min_length=1)]
LoraRank = Annotated[int, Field(ge=1, le=1024)]
LoraAlpha = Annotated[int, Field(ge=1, le=4096)]
LoraDropout = Annotated[float, Field(ge=0, le=0.9, allow_inf_nan=False)]
Epochs = Annotated[int, Field(ge=1, le=1000)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
LearningRate = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
SeqLen = Annotated[int, Field(ge=16, le=1_048_576)]
QualityScore = Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)]
ValSplit = Annotated[float, Field(gt=0, le=0.5, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
CheckpointsKept = Annotated[int, Field(ge=1, le=1000)]
EvalSamples = Annotated[int, Field(ge=0, le=1000)]
DpoBeta = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]
PairsPerPrompt = Annotated[int, Field(ge=1, le=1000)]


def _bounds(info: FieldInfo) -> dict[str, float]:
    found: dict[str, float] = {}
    for item in info.metadata:
        if not isinstance(item, annotated_types.BaseMetadata):
            continue
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else str(value)


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The annotation without `| None`, and whether None is allowed."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), True
    return annotation, False


def _unwrap(info: FieldInfo) -> tuple[Any, bool, dict[str, float]]:
    """(base type, None allowed, bounds), through `Annotated[int, Field(...)] | None`."""
    annotation, nullable = _plain(info.annotation)
    bounds = _bounds(info)
    if typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            if isinstance(item, FieldInfo):
                bounds.update(_bounds(item))
    return annotation, nullable, bounds


def base_type(info: FieldInfo) -> Any:
    """The field's type without `| None` or `Annotated`: `int`, `bool`, `Literal[...]`, ..."""
    return _unwrap(info)[0]


def allowed(info: FieldInfo) -> str:
    """What a field accepts, as the end of a sentence: `must be an integer between 1 and 8`."""
    annotation, nullable, bounds = _unwrap(info)
    suffix = " (or null)" if nullable else ""
    if typing.get_origin(annotation) is Literal:
        return f"must be one of {', '.join(map(str, typing.get_args(annotation)))}{suffix}"
    if annotation is bool:
        return "must be true or false" + suffix
    if annotation is int:
        low, high = bounds.get("ge"), bounds.get("le")
        if low is not None and high is not None:
            return f"must be an integer between {low} and {high}{suffix}"
        return f"must be an integer >= {low}{suffix}" if low is not None else "must be an integer"
    if annotation is float:
        if not bounds:
            return "must be a number" + suffix
        left = f"({_number(bounds['gt'])}" if "gt" in bounds else f"[{_number(bounds['ge'])}"
        right = f"{_number(bounds['le'])}]" if "le" in bounds else f"{_number(bounds['lt'])})"
        return f"must be a number in {left}, {right}{suffix}"
    if typing.get_origin(annotation) is list:
        return MODULES_MESSAGE
    return "must be a non-empty string" if annotation is str else "is not valid"


def field_errors(
    exc: ValidationError,
    fields: dict[str, FieldInfo],
    *,
    by_alias: bool = True,
    unknown: str = "unknown field",
) -> dict[str, str]:
    """{field name as the caller spelled it: message}, one entry per field that failed;
    `unknown` is the message for a key the model does not declare."""
    by_name = {
        (info.alias if by_alias and info.alias else name): info for name, info in fields.items()
    }
    errors: dict[str, str] = {}
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "config"
        info = by_name.get(key)
        if error["type"] == "extra_forbidden" or info is None:
            errors[key] = unknown
        elif error["type"] == "value_error":
            errors.setdefault(key, str(error["ctx"]["error"]))
        else:
            errors.setdefault(key, allowed(info))
    return errors


def constraints(info: FieldInfo) -> dict[str, Any]:
    """The field's bounds (ge/gt/le/lt), through `| None` and `Annotated`."""
    return _unwrap(info)[2]
