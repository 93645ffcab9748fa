"""What a rule may match: the action types and preview fields of every registered domain.

A rule is checked against the preview models of the domains its `type` globs name (every
domain when it names none); `docs/policy.md`'s table of fields is generated from the same
models (`python -m goex.policy.fields` prints it; a test keeps the docs in step).
"""

from __future__ import annotations

import difflib
import fnmatch
import types
import typing
from typing import TYPE_CHECKING, Any

from ..adapters.registry import Domain, action_types, domains
from ..yamlmodel import FieldError
from .schema import BUDGETS, Each, Threshold

if TYPE_CHECKING:
    from .schema import Match

_KINDS = {bool: "bool", str: "text", int: "number", float: "number"}


def field_kind(annotation: Any) -> str:
    """bool, text, number, list (of text), or detail (shown, not matchable)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in _KINDS:
        return _KINDS[annotation]
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (str,):
        return "list"
    return "detail"


def unknown_type(glob: str) -> str | None:
    """Why an action type glob names no action (with the nearest type), or None when it names one."""
    known = action_types()
    if any(fnmatch.fnmatchcase(t, glob) for t in known):
        return None
    near = difflib.get_close_matches(glob, known, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else f"; action types: {', '.join(known)}"
    return f"action type {glob!r} names no action{hint}"


def _domains_for(type_globs: list[str]) -> list[Domain]:
    if not type_globs:
        return list(domains().values())
    return [d for d in domains().values() if any(fnmatch.fnmatchcase(t, g) for t in d.types for g in type_globs)]


def check_match(match: "Match") -> None:
    """Raise ValueError unless every type glob names an action and every preview field exists,
    with a value of its kind, in the preview of the actions the match names."""
    for i, glob in enumerate(match.type):
        why = unknown_type(glob)
        if why:
            raise FieldError(why, "type", i)
    fields: dict[str, set[str]] = {}
    for domain in _domains_for(match.type):
        for name, info in domain.preview.model_fields.items():
            fields.setdefault(name, set()).add(field_kind(info.annotation))
    for name, want in match.preview.items():
        if name not in fields:
            near = difflib.get_close_matches(name, list(fields), n=1)
            named = f"the previews of {', '.join(match.type)}" if match.type else "any preview"
            hint = f"; did you mean {near[0]!r}?" if near else f"; fields: {', '.join(sorted(fields))}"
            raise FieldError(f"preview field {name!r} is not in {named}{hint}", "preview", name)
        problem = _misfit(name, fields[name], want)
        if problem:
            raise FieldError(problem, "preview", name)


def _misfit(name: str, kinds: set[str], want: Any) -> str | None:
    if "detail" in kinds and len(kinds) == 1:
        return f"preview field {name!r} holds detail a rule cannot match (see docs/policy.md for matchable fields)"
    if isinstance(want, Each):
        return None if "list" in kinds else (f"preview field {name!r} is not a list: "
                                             "{any|all: ...} fits list fields only")
    if "list" in kinds and not isinstance(want, Threshold):
        return (f"preview field {name!r} is a list: {name}: {want!r} would never match; write {name}: "
                f"{{any: {want!r}}} (some item is) or {name}: {{all: {want!r}}} (every item is)")
    if isinstance(want, Threshold):
        return None if kinds & {"number", "list"} else (f"preview field {name!r} is not a number: "
                                                        "{gt|gte|lt|lte} cannot compare it")
    kind = "bool" if isinstance(want, bool) else "text" if isinstance(want, str) else "number"
    if kind not in kinds:
        shown = " or ".join(sorted(kinds))
        return f"preview field {name!r} is {shown}, but the rule gives {type(want).__name__} {want!r}"
    return None


def budget_names() -> tuple[str, ...]:
    extra = []
    for domain in domains().values():
        if domain.source != "goex":
            extra += [b for b in getattr(domain.load(), "budgets", ()) if b not in BUDGETS]
    return BUDGETS + tuple(extra)


def table() -> str:
    """The markdown table of matchable preview fields, one row per domain and field."""
    rows = ["| domain | field | kind | what it is |", "|---|---|---|---|"]
    for domain in domains().values():
        for name, info in domain.preview.model_fields.items():
            kind = field_kind(info.annotation)
            if kind == "detail":
                continue
            shown = {"list": "list (`{any: V}`, `{all: V}`, or `{gt: N}` on its length)",
                     "number": "number (`N` or `{gt|gte|lt|lte: N}`)"}.get(kind, kind)
            rows.append(f"| {domain.prefix} | `{name}` | {shown} | {info.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
