"""Deciding: a compiled pack (plus Python rules) evaluated on one action, and the rules of the
workspace itself that hold under every pack (protected paths, paths an adapter owns, budgets)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .globs import glob_regex, literal_prefix, type_regex
from .schema import ALLOW, BUDGETS, RANK, Decision, Each, Pack, PolicyError, PythonRule, Rule, RuleMatch, Threshold


@dataclass
class _Compiled:
    rule: Rule
    types: re.Pattern[str] | None
    paths: list[re.Pattern[str]] = field(default_factory=list)
    any_path: re.Pattern[str] | None = field(init=False, default=None)  # the path patterns as one alternation

    def __post_init__(self) -> None:
        if self.paths and len({rx.flags for rx in self.paths}) == 1:  # each anchored: `a|b` matches where a or b does
            self.any_path = re.compile("|".join(f"(?:{rx.pattern})" for rx in self.paths), self.paths[0].flags)


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
        # the compiled rules whose type pattern takes an action type, found once per type: a rule's
        # type pattern depends on the type alone, so the others can never match it
        self._by_type: dict[str, list[_Compiled]] = {}

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
        new._python = [p for p in self._python if p[0].id not in gone] + [(r, type_regex(r.type)) for r in rules]
        new._by_type = {}
        return new

    def decide(self, action_type: str, targets: list[str], preview: dict[str, Any]) -> Decision:
        typed = self._by_type.get(action_type)
        if typed is None:
            typed = [c for c in self._compiled if c.types is None or c.types.match(action_type)]
            if len(self._by_type) < 256:  # action types are few; anything else is not kept
                self._by_type[action_type] = typed
        matches = tuple(
            RuleMatch(c.rule.id, c.rule.decision, c.rule.severity, c.rule.cost, c.rule.message or c.rule.description)
            for c in typed
            if _matches(c, targets, preview)
        )
        if self._python:
            matches += tuple(m for rule, types in self._python
                             if types is None or types.match(action_type)
                             for m in (_ask_rule(rule, action_type, targets, preview),) if m is not None)
        if not matches:
            return ALLOW
        verdict = max((m.decision for m in matches), key=RANK.__getitem__)
        return Decision(verdict, matches)

    def verdict(self, matches: Iterable[RuleMatch]) -> Decision:
        """The decision on matches from several sources (the pack, the workspace, budgets):
        the strictest wins, and a pack with `confirm: deny` refuses what needs confirmation."""
        matches = tuple(matches)
        if not matches:
            return ALLOW
        verdict = max((m.decision for m in matches), key=RANK.__getitem__)
        if verdict == "confirm" and self.confirm == "deny":
            verdict = "deny"
        return Decision(verdict, matches)

    def over_budget(self, spent: dict[str, int], totals: dict[str, int]) -> list[RuleMatch]:
        """A `budget.<name>` denial for each budget this action would take past its limit."""
        out = []
        for name in (*BUDGETS, *(b for b in self.budgets if b not in BUDGETS)):
            limit = self.budgets.get(name)
            if limit is not None and spent.get(name) and totals.get(name, 0) + spent[name] > limit:
                out.append(RuleMatch(f"budget.{name}", "deny", "severe", 1.0,
                                     f"the session's {name} budget of {limit:,} would be exceeded "
                                     f"({totals.get(name, 0):,} spent, this action needs {spent[name]:,})"))
        return out

    def counts(self, spent: dict[str, int]) -> bool:
        """Whether any budget this pack sets counts what an action spends."""
        return any(spent.get(name) for name in self.budgets)


class WorkspaceRules:
    """Rules of the workspace itself, in every pack: protected paths (may be read, not changed)
    and paths an adapter owns (a SQLite database's files: only that adapter may change them)."""

    def __init__(self, protected: Iterable[str], owned: Callable[[], dict[str, str]]):
        self.protected = tuple(protected)
        self._protected = [(glob_regex(g), literal_prefix(g)) for g in self.protected]
        self._owned = owned

    def matches(self, paths: list[str], *, owned: bool = True) -> list[RuleMatch]:
        out = []
        hit = next((t for t in paths for rx, prefix in self._protected
                    if rx.match(t) or (prefix is not None and prefix.startswith(t.rstrip("/") + "/"))), None)
        if hit is not None:
            out.append(RuleMatch("workspace.protected", "deny", "severe", 1.0,
                                 f"{hit} is protected for this run; it may be read, not changed"))
        if owned and paths:
            table = self._owned()
            path = next((t for t in paths if t.lower() in table), None)
            if path is not None:
                out.append(RuleMatch("workspace.database-file", "deny", "critical", 1.0,
                                     f"{path} {table[path.lower()]}"))
        return out


def _compile(rule: Rule) -> _Compiled:
    return _Compiled(rule, type_regex(rule.match.type), [glob_regex(p) for p in rule.match.path])


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


def _matches(c: _Compiled, targets: list[str], preview: dict[str, Any]) -> bool:
    """Whether rule `c`, whose type pattern takes the action's type, matches its targets and preview."""
    if c.any_path is not None:
        if not any(c.any_path.match(t) for t in targets):
            return False
    elif c.paths and not any(rx.match(t) for rx in c.paths for t in targets):
        return False
    for key, want in c.rule.match.preview.items():
        have = preview.get(key)
        if isinstance(want, (Threshold, Each)):
            if not want.test(have):
                return False
        elif have != want or isinstance(have, bool) != isinstance(want, bool):
            return False
    return True
