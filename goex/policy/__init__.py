"""Declarative policy: packs of rules (YAML data, no code) compiled once, decided per action.

A rule matches on the action type, the paths it targets, and fields of the adapter's preview;
every matching rule is reported and the most restrictive decision wins (deny > confirm > allow).
An action no rule matches is allowed. See docs/policy.md.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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
    "db", "kinds", "tables", "where_missing", "drops", "drop_column", "rows", "writes",  # sql
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
    """A compiled pack. `decide` is pure and deterministic."""

    def __init__(self, pack: Pack, source: str = "<memory>"):
        self.name = pack.name
        self.source = source
        self.rules = list(pack.rules)
        self.budgets = dict(pack.budgets)
        self.confirm = pack.confirm
        self._compiled = [_compile(r) for r in self.rules]

    def decide(self, action_type: str, targets: list[str], preview: dict[str, Any]) -> Decision:
        matches = tuple(
            RuleMatch(c.rule.id, c.rule.decision, c.rule.severity, c.rule.cost, c.rule.message or c.rule.description)
            for c in self._compiled
            if _matches(c, action_type, targets, preview)
        )
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


def _compile(rule: Rule) -> _Compiled:
    types = re.compile("|".join(fnmatch.translate(t) for t in rule.match.type)) if rule.match.type else None
    return _Compiled(rule, types, [glob_regex(p) for p in rule.match.path])


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
