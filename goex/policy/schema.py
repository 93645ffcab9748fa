"""What a policy pack is: rules, matches, budgets (validated models), and what deciding yields.

A rule's `match.preview` is checked against the preview models of the domains its `type`
globs name (`fields.py`): a field no such preview has, a value of the wrong kind, or a type
glob that names no action is an error at load, never a rule that silently never matches.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import GoexError
from ..yamlmodel import FieldError

Verdict = Literal["allow", "deny", "confirm"]
Severity = Literal["info", "mild", "severe", "critical"]
RANK = {"allow": 0, "confirm": 1, "deny": 2}
SEVERITY = {"info": 0, "mild": 1, "severe": 2, "critical": 3}

#: Budgets every pack may set; an adapter may add its own (`Adapter.budgets`).
BUDGETS = ("files_deleted", "bytes_written", "rows_changed", "http_calls", "irreversible_calls")


class PolicyError(GoexError):
    """A policy pack is broken; the message names the file, the line and what is wrong."""


class Threshold(BaseModel):
    """A number compared: `rows: {gt: 1000}`. On a list field, its length is compared."""

    model_config = ConfigDict(extra="forbid", strict=True)
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def test(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):  # a list field compares by its length (`all_rows: {gt: 0}`)
            value = len(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return ((self.gt is None or value > self.gt) and (self.gte is None or value >= self.gte)
                and (self.lt is None or value < self.lt) and (self.lte is None or value <= self.lte))


class Each(BaseModel):
    """A list field tested item by item: `kinds: {any: drop}` (some item is one of the values),
    `kinds: {all: select}` (the list is not empty and every item is one of them)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    any: list[str] | None = None
    all: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_value(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: [v] if isinstance(v, str) else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "Each":
        if (self.any is None) == (self.all is None):
            raise ValueError("a list test is {any: VALUE or [VALUES]} or {all: VALUE or [VALUES]}")
        return self

    def test(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if self.any is not None:
            return any(item in self.any for item in value)
        return bool(value) and all(item in (self.all or ()) for item in value)


Want = bool | str | int | float | Threshold | Each


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: list[str] = Field(default_factory=list, description="Action type globs, e.g. 'fs.*'.")
    path: list[str] = Field(default_factory=list, description="Path globs; without '/', any component.")
    preview: dict[str, Any] = Field(default_factory=dict, description="Preview fields and the values they must have.")

    @field_validator("preview", mode="before")
    @classmethod
    def _values(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("preview maps preview fields to values, e.g. {rows: {gt: 1000}, drops: true}")
        return {k: _want(k, v) for k, v in value.items()}

    @model_validator(mode="after")
    def _against_previews(self) -> "Match":
        from .fields import check_match

        check_match(self)
        return self


def _want(field: str, value: Any) -> Want:
    if isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, dict) and set(value) and set(value) <= {"any", "all"}:
        return Each.model_validate(value)
    if isinstance(value, dict) and set(value) and set(value) <= {"gt", "gte", "lt", "lte"}:
        return Threshold.model_validate(value)
    raise ValueError(f"preview field {field!r}: {value!r} is not a value a rule can match: give true/false, a "
                     "string, a number, {gt|gte|lt|lte: NUMBER}, or for a list field {any|all: VALUE}")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(min_length=1)
    description: str = ""
    match: Match
    decision: Verdict
    severity: Severity = "mild"
    cost: float = 0.0
    message: str = ""


RuleTest = Callable[[str, list[str], dict[str, Any]], bool]


@dataclass(frozen=True)
class PythonRule:
    """A rule written in Python, for what a YAML `match` cannot say.

    `when(action_type, targets, preview)` returns True when the rule matches: `targets` are the
    paths (or `METHOD URL`, `db`) the action touches, folder contents and database files
    included, and `preview` is the adapter's preview (the fields docs/policy.md lists). It must
    not change its arguments. `type` (globs over the action type, as in a YAML `match`) limits
    the actions `when` is called for. A `when` that raises, or returns anything but True or
    False, matches as a `deny` whose message names the error: a rule that cannot decide never
    lets an action through.

    Add rules to a pack with `load_policy("default").with_rules(rule, ...)`.
    """

    id: str
    decision: Verdict
    when: RuleTest
    severity: Severity = "mild"
    cost: float = 0.0
    message: str = ""
    description: str = ""
    type: "tuple[str, ...] | list[str] | str" = ()

    def __post_init__(self) -> None:
        where = f"Python rule {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise PolicyError(f"Python rule: id must be a non-empty string, got {self.id!r}")
        if self.decision not in RANK:
            raise PolicyError(f"{where}: decision must be allow, deny or confirm, got {self.decision!r}")
        if self.severity not in SEVERITY:
            raise PolicyError(f"{where}: severity must be info, mild, severe or critical, got {self.severity!r}")
        if isinstance(self.cost, bool) or not isinstance(self.cost, (int, float)):
            raise PolicyError(f"{where}: cost must be a number, got {self.cost!r}")
        if not callable(self.when):
            raise PolicyError(f"{where}: when must be a callable (action_type, targets, preview) -> bool")
        if not isinstance(self.message, str) or not isinstance(self.description, str):
            raise PolicyError(f"{where}: message and description are strings")
        types = (self.type,) if isinstance(self.type, str) else tuple(self.type)
        if not all(isinstance(t, str) and t for t in types):
            raise PolicyError(f"{where}: type is a list of action type globs, e.g. ['fs.*']")
        from .fields import unknown_type

        wrong = next((t for t in types if unknown_type(t)), None)
        if wrong is not None:
            raise PolicyError(f"{where}: {unknown_type(wrong)}")
        object.__setattr__(self, "type", types)
        object.__setattr__(self, "cost", float(self.cost))


class Pack(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str = ""
    extends: str | None = None
    confirm: Literal["ask", "deny"] = Field(
        default="ask", description="'deny': what a rule sends to confirmation is refused (and costed) instead.")
    budgets: dict[str, int] = Field(default_factory=dict, description="Per-session limits (blast radius).")
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("budgets")
    @classmethod
    def _known_budgets(cls, value: dict[str, int]) -> dict[str, int]:
        from .fields import budget_names

        known = budget_names()
        unknown = sorted(set(value) - set(known))
        if unknown:
            near = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"budgets: {', '.join(known)}"
            raise FieldError(f"unknown budget {unknown[0]!r}; {hint}", unknown[0])
        return value

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        first: dict[str, int] = {}
        for i, rule in enumerate(rules):
            if rule.id in first:
                raise FieldError(f"rule id {rule.id!r} is already the id of rule {first[rule.id] + 1}: a pack's "
                                 "rules have distinct ids (a pack that extends another replaces a rule by its id)",
                                 i, "id")
            first[rule.id] = i
        return rules


@dataclass(frozen=True)
class RuleMatch:
    id: str
    decision: Verdict
    severity: Severity
    cost: float
    message: str


@dataclass(frozen=True)
class Decision:
    """The verdict on one action and every rule that matched it."""

    verdict: Verdict
    matches: tuple[RuleMatch, ...] = ()

    @property
    def rules(self) -> list[str]:
        return [m.id for m in self.matches]

    @property
    def cost(self) -> float:
        return sum(m.cost for m in self.matches)

    @property
    def severity(self) -> Severity | None:
        return max((m.severity for m in self.matches), key=SEVERITY.__getitem__, default=None)

    @property
    def reason(self) -> str:
        deciding = [m for m in self.matches if m.decision == self.verdict] or [
            m for m in self.matches if m.decision != "allow"]  # a confirmation the pack turned into a refusal
        return "; ".join(f"{m.id}: {m.message}" for m in deciding) or self.verdict

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "rules": [m.__dict__ for m in self.matches]}


ALLOW = Decision("allow")
