"""Declarative policy: packs of rules (YAML data, no code) compiled once, decided per action.

A rule matches on the action type, the paths it targets, and fields of the adapter's preview;
every matching rule is reported and the most restrictive decision wins (deny > confirm > allow).
An action no rule matches is allowed. Rules written in Python (`PythonRule`) are added to a
compiled pack with `Policy.with_rules` and decide the same way. See docs/policy.md.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import GoexError

Verdict = Literal["allow", "deny", "confirm"]
Severity = Literal["info", "mild", "severe", "critical"]
_RANK = {"allow": 0, "confirm": 1, "deny": 2}
_SEVERITY = {"info": 0, "mild": 1, "severe": 2, "critical": 3}


class PolicyError(GoexError):
    """A policy pack is broken; the message names the file, the line and what is wrong."""


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def test(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return ((self.gt is None or value > self.gt) and (self.gte is None or value >= self.gte)
                and (self.lt is None or value < self.lt) and (self.lte is None or value <= self.lte))


#: Every field an adapter's preview has; a rule naming another could never match, so it is an error.
PREVIEW_FIELDS = frozenset({
    "paths", "bytes_written", "overwrites", "files_deleted", "bytes_deleted", "folder", "mode", "world_writable",
    "setuid",  # files
    "method", "host", "path", "route", "kind", "reversible", "collection", "secrets",  # http
    "db", "kinds", "tables", "where_missing", "drops", "drop_column", "rows", "writes", "all_rows",
    "creates_trigger",  # sql
    "language", "network", "timeout_s", "memory_mb", "backend", "unsafe",  # code
})


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: list[str] = Field(default_factory=list, description="Action type globs, e.g. 'fs.*'.")
    path: list[str] = Field(default_factory=list, description="Path globs; without '/', any component.")
    preview: dict[str, bool | str | Threshold] = Field(default_factory=dict)

    @field_validator("preview")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - PREVIEW_FIELDS)
        if unknown:
            raise ValueError(f"unknown preview field {unknown[0]!r}; known: {', '.join(sorted(PREVIEW_FIELDS))}")
        return value


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
        if self.decision not in _RANK:
            raise PolicyError(f"{where}: decision must be allow, deny or confirm, got {self.decision!r}")
        if self.severity not in _SEVERITY:
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
        object.__setattr__(self, "type", types)
        object.__setattr__(self, "cost", float(self.cost))


BUDGETS = ("files_deleted", "bytes_written", "rows_changed", "http_calls", "irreversible_calls")
Budget = Literal["files_deleted", "bytes_written", "rows_changed", "http_calls", "irreversible_calls"]


class Pack(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    description: str = ""
    extends: str | None = None
    confirm: Literal["ask", "deny"] = Field(
        default="ask", description="'deny': what a rule sends to confirmation is refused (and costed) instead.")
    budgets: dict[Budget, int] = Field(default_factory=dict, description="Per-session limits (blast radius).")
    rules: list[Rule] = Field(default_factory=list)


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
        return max((m.severity for m in self.matches), key=_SEVERITY.__getitem__, default=None)

    @property
    def reason(self) -> str:
        deciding = [m for m in self.matches if m.decision == self.verdict] or [
            m for m in self.matches if m.decision != "allow"]  # a confirmation the pack turned into a refusal
        return "; ".join(f"{m.id}: {m.message}" for m in deciding) or self.verdict

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "rules": [m.__dict__ for m in self.matches]}


ALLOW = Decision("allow")


@dataclass
class _Compiled:
    rule: Rule
    types: re.Pattern[str] | None
    paths: list[re.Pattern[str]] = field(default_factory=list)


class Policy:
    """A compiled pack, plus any Python rules. `decide` is deterministic as long as the Python
    rules are. `rules` lists every rule in the order they are reported: the pack's, then the
    Python ones."""

    def __init__(self, pack: Pack, source: str = "<memory>"):
        self.name = pack.name
        self.source = source
        self.rules: list[Rule | PythonRule] = list(pack.rules)
        self.budgets = dict(pack.budgets)
        self.confirm = pack.confirm
        self._compiled = [_compile(r) for r in pack.rules]
        self._python: list[tuple[PythonRule, re.Pattern[str] | None]] = []

    def with_rules(self, *rules: PythonRule, replace: bool = False) -> "Policy":
        """A new Policy: this one plus `rules` (`PythonRule`s), reported after the existing ones.

        A rule whose id is already taken (by a rule of the pack or an earlier Python rule) is an
        error, unless `replace=True`: then the rule with that id is dropped and the new one takes
        its place at the end, as a pack that `extends` another replaces rules by id."""
        for rule in rules:
            if not isinstance(rule, PythonRule):
                raise PolicyError(f"with_rules takes PythonRule objects, got {type(rule).__name__}")
        ids = [r.id for r in rules]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise PolicyError(f"Python rule id {twice[0]!r} is given twice")
        taken = sorted(set(ids) & {r.id for r in self.rules})
        if taken and not replace:
            raise PolicyError(f"Python rule id {taken[0]!r} is already a rule of policy {self.name!r}; choose "
                              "another id, or pass replace=True to put the Python rule in its place")
        new = object.__new__(Policy)
        new.__dict__.update(self.__dict__)
        gone = set(taken)
        new.rules = [r for r in self.rules if r.id not in gone] + list(rules)
        new._compiled = [c for c in self._compiled if c.rule.id not in gone]
        new._python = [p for p in self._python if p[0].id not in gone] + [(r, _type_regex(r.type)) for r in rules]
        return new

    def decide(self, action_type: str, targets: list[str], preview: dict[str, Any]) -> Decision:
        matches = tuple(
            RuleMatch(c.rule.id, c.rule.decision, c.rule.severity, c.rule.cost, c.rule.message or c.rule.description)
            for c in self._compiled
            if _matches(c, action_type, targets, preview)
        )
        if self._python:
            matches += tuple(m for rule, types in self._python
                             if types is None or types.match(action_type)
                             for m in (_ask_rule(rule, action_type, targets, preview),) if m is not None)
        if not matches:
            return ALLOW
        verdict = max((m.decision for m in matches), key=_RANK.__getitem__)
        return Decision(verdict, matches)


def usage(action_type: str, preview: dict[str, Any]) -> dict[str, int]:
    """What one action spends of each budget, from its preview."""
    spent = {"files_deleted": int(preview.get("files_deleted") or 0),
             "bytes_written": int(preview.get("bytes_written") or 0),
             "rows_changed": int(preview.get("rows") or 0)}
    if action_type == "http.request":
        spent["http_calls"] = 1
        spent["irreversible_calls"] = int(preview.get("reversible") is False)
    return {k: v for k, v in spent.items() if v}


def _type_regex(globs: Iterable[str]) -> re.Pattern[str] | None:
    globs = list(globs)
    return re.compile("|".join(fnmatch.translate(t) for t in globs)) if globs else None


def _compile(rule: Rule) -> _Compiled:
    return _Compiled(rule, _type_regex(rule.match.type), [glob_regex(p) for p in rule.match.path])


def _ask_rule(rule: PythonRule, action_type: str, targets: list[str], preview: dict[str, Any]) -> RuleMatch | None:
    """The match of a Python rule, or None. A rule that fails denies: it cannot vouch for the action."""
    try:
        answer = rule.when(action_type, targets, preview)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is a refusal, never an allow
        text = str(exc)
        text = f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}" if text else type(exc).__name__
        return RuleMatch(rule.id, "deny", rule.severity, rule.cost,
                         f"the rule raised {text}; refused, since a rule that cannot decide does not allow")
    if answer is True:
        return RuleMatch(rule.id, rule.decision, rule.severity, rule.cost, rule.message or rule.description)
    if answer is False:
        return None
    return RuleMatch(rule.id, "deny", rule.severity, rule.cost,
                     f"the rule returned {type(answer).__name__} {str(answer)[:80]!r}, not True or False; "
                     "refused, since a rule that cannot decide does not allow")


def _matches(c: _Compiled, action_type: str, targets: list[str], preview: dict[str, Any]) -> bool:
    if c.types is not None and not c.types.match(action_type):
        return False
    if c.paths and not any(rx.match(t) for rx in c.paths for t in targets):
        return False
    for key, want in c.rule.match.preview.items():
        have = preview.get(key)
        if isinstance(want, Threshold):
            if not want.test(have):
                return False
        elif have != want:
            return False
    return True


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: `*` and `?` stay in one component, `**` spans any number.

    A pattern without '/' matches any component of the path and everything below it
    (`.git` matches `.git/config`, `*.pem` matches `certs/site.pem`), as in .gitignore.
    """
    anchored = "/" in pattern.strip("/")
    body = _glob_body(pattern.strip("/"))
    prefix = "" if anchored else "(?:.*/)?"
    # case-insensitive: `.ENV` is `.env` on case-insensitive file systems, and refusing too much is the safe side
    return re.compile(f"^{prefix}{body}(?:/.*)?$", re.DOTALL | re.IGNORECASE)


def _glob_body(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


# -- loading -----------------------------------------------------------------------------------


def shipped_packs() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("goex.policies").iterdir()
                  if p.name.endswith(".yaml"))


def load_policy(spec: "str | Path | Policy") -> Policy:
    """A shipped pack by name (`default`, `permissive`, …), a YAML file path, or a Policy."""
    if isinstance(spec, Policy):
        return spec
    pack, source = _load_pack(spec, seen=())
    return Policy(pack, source)


def _load_pack(spec: "str | Path", seen: tuple[str, ...]) -> tuple[Pack, str]:
    text, source = _read(spec)
    if source in seen:
        raise PolicyError(f"{source}: 'extends' loops back to itself ({' -> '.join(seen + (source,))})")
    pack = parse_pack(text, source)
    if pack.extends is None:
        return pack, source
    base, _ = _load_pack(pack.extends, seen + (source,))
    overrides = {r.id for r in pack.rules}
    rules = [r for r in base.rules if r.id not in overrides] + pack.rules
    budgets = {**base.budgets, **pack.budgets}
    confirm = pack.confirm if "confirm" in pack.model_fields_set else base.confirm
    return Pack(name=pack.name, description=pack.description, extends=pack.extends, confirm=confirm,
                budgets=budgets, rules=rules), source


def _read(spec: "str | Path") -> tuple[str, str]:
    name = str(spec)
    if isinstance(spec, str) and "/" not in name and not name.endswith((".yaml", ".yml")):
        entry = resources.files("goex.policies") / f"{name}.yaml"
        if not entry.is_file():
            raise PolicyError(f"no shipped policy pack named {name!r}; choose one of {', '.join(shipped_packs())} "
                              "or give the path of a YAML file")
        return entry.read_text("utf-8"), f"{name} (shipped)"
    path = Path(spec)
    try:
        return path.read_text("utf-8"), str(path)
    except OSError as exc:
        raise PolicyError(f"cannot read policy pack {path}: {exc.strerror}") from None


def parse_pack(text: str, source: str = "<string>") -> Pack:
    """Parse and validate a pack; errors name the file, the line and the problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PolicyError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{source}:1: a policy pack is a mapping with 'name' and 'rules'")
    try:
        return Pack.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        line = _line_of(root, err["loc"])
        where = ".".join(str(p) for p in err["loc"])
        msg = "is required" if err["type"] == "missing" else (
            "is not a known field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "))
        raise PolicyError(f"{source}:{line}: {where} {msg}") from None


def _line_of(node: Any, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest YAML node on `loc` that exists."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
        else:
            nxt = None
        if nxt is None:
            break
        node, line = nxt, nxt.start_mark.line + 1
    return line
