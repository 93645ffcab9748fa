"""The one action format: a pydantic union discriminated on `type`, exportable as JSON Schema.

Each adapter declares its own models; this module only assembles them, from every domain the
adapter registry knows (the shipped ones and installed packages'), on first use.
"""

from __future__ import annotations

import difflib
import json
import math
import threading
from typing import Annotated, Any, Protocol, Union, cast

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from .adapters.registry import domains
from .adapters.values import MAX_DEPTH
from .errors import ActionError


class ActionModel(Protocol):
    """What goex reads of any action model (a pydantic model, declared by its adapter): its
    `type`, the targets it names, and its JSON form."""

    @property
    def type(self) -> str: ...

    def targets(self) -> list[str]: ...

    def model_dump(self, *, mode: str = "python", by_alias: bool = False) -> dict[str, Any]: ...


class _Union:
    """The discriminated union of every registered action model, built once."""

    def __init__(self) -> None:
        models = tuple(m for d in domains().values() for m in d.actions)
        self.models: tuple[type[BaseModel], ...] = models
        self.types: tuple[str, ...] = tuple(m.model_fields["type"].default for m in models)
        self.union = _discriminated(models)
        self.adapter: TypeAdapter[Any] = TypeAdapter(self.union)


def _discriminated(models: tuple[type[BaseModel], ...]) -> Any:
    """The union of `models`, told apart by their `type` field (a type form, built at run time)."""
    return Annotated[Union[models], Field(discriminator="type")]


_lock = threading.Lock()
_union: _Union | None = None


def _actions() -> _Union:
    global _union
    with _lock:
        if _union is None:
            _union = _Union()
        return _union


def forget() -> None:
    """Build the union again on next use (the registry found new adapters)."""
    global _union
    with _lock:
        _union = None


def __getattr__(name: str) -> Any:
    if name == "ACTION_MODELS":
        return _actions().models
    if name == "ACTION_TYPES":
        return _actions().types
    if name == "Action":  # the union type, e.g. for a FastAPI body
        return _actions().union
    raise AttributeError(name)


#: Largest action accepted, in bytes of JSON (or of content for models); bigger ones are malformed.
DEFAULT_MAX_ACTION_BYTES = 32 * 1024 * 1024


def parse_action(action: Any, *, max_bytes: int = DEFAULT_MAX_ACTION_BYTES) -> ActionModel:
    """Validate `action` (a model, a dict, or a JSON string/bytes) into an action model.

    Raises `ActionError` naming every problem; never partially accepts.
    """
    union = _actions()
    if isinstance(action, union.models):
        _check_size(_model_size(action), max_bytes)
        return cast(ActionModel, action)  # a registered model: it has `type` and `targets()`
    if isinstance(action, (bytes, bytearray)):
        _check_size(len(action), max_bytes)
        try:
            action = action.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ActionError(f"action is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if isinstance(action, str):
        _check_size(len(action), max_bytes)
        action = _load_json(action)
    if not isinstance(action, dict):
        raise ActionError(f"an action is a JSON object with a 'type' field, got {type(action).__name__}")
    kind = action.get("type")
    if kind not in union.types:
        known = ", ".join(union.types)
        if "type" not in action:
            raise ActionError(f"the action has no 'type' field; give one of: {known}")
        near = difflib.get_close_matches(str(kind), list(union.types), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ActionError(f"unknown action type {kind!r}; {hint}known types: {known}")
    try:
        model: ActionModel = union.adapter.validate_python(action)
    except ValidationError as exc:
        raise ActionError(f"{kind}: " + describe_validation_error(exc)) from None
    _check_size(_model_size(model), max_bytes)
    return model


def _load_json(text: str) -> Any:
    """The JSON text as Python values; numbers that no column or JSON peer can hold are malformed."""
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ActionError(f"action is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ActionError(f"action is nested too deeply (values may nest {MAX_DEPTH} levels)") from None


def _bounded_int(digits: str) -> int:
    if len(digits) > 20:  # int() of a long digit string is slow, and refused past 4,300 digits
        raise ActionError("action holds an integer outside the signed 64-bit range; send it as a string")
    return int(digits)  # the range itself is checked by the field that takes it


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ActionError(f"action holds the number {text[:40]}, which overflows a double; send it as a string")
    return value


def _no_constant(name: str) -> float:
    raise ActionError(f"action holds {name}, which is not JSON; send it as a string")


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"][1:] if p != "function-after")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            msg = "is not a field of this action"
        parts.append(f"'{loc}' {msg}" if loc else msg)
    return "; ".join(parts)


def action_schema() -> dict[str, Any]:
    """JSON Schema of every action, ready to hand to a tool-calling API."""
    return _actions().adapter.json_schema()


def action_to_json(action: ActionModel) -> dict[str, Any]:
    return action.model_dump(mode="json", by_alias=True)


def _model_size(model: object) -> int:
    return sum(len(v) for v in vars(model).values() if isinstance(v, str))


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise ActionError(
            f"action is {size:,} bytes, over the limit of {limit:,}; split the content into "
            "several appends (fs.write with append=true) or raise max_action_bytes"
        )
