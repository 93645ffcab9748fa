"""One way to read YAML into a validated model: every error names the file, the line and the field.

Policy packs, gym tasks, compensation routes and secrets files are all read through `load_yaml`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import GoexError

M = TypeVar("M", bound=BaseModel)


def parse_yaml(text: str, source: str, error: type[GoexError] = GoexError) -> tuple[Any, Any]:
    """The YAML's data and its node tree (for line numbers); `error` names the line of a syntax error."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise error(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    return data, root


def load_yaml(text: str, model: type[M], source: str, error: type[GoexError] = GoexError,
              what: str = "a mapping") -> M:
    """`text` validated as `model`; the first problem is raised as `error("FILE:LINE: field what's wrong")`."""
    data, root = parse_yaml(text, source, error)
    if not isinstance(data, dict):
        raise error(f"{source}:1: expected {what}")
    return validate(data, root, model, source, error)


class FieldError(ValueError):
    """A validator's error about a part of the value it checks: `at` is the path below the
    validated field (a rule's `("preview", "rows")`), so the error names that part's line."""

    def __init__(self, message: str, *at: str | int):
        super().__init__(message)
        self.at = at


def validate(data: Any, root: Any, model: type[M], source: str, error: type[GoexError] = GoexError) -> M:
    """`data` as `model`; every problem is reported, one `FILE:LINE: field what's wrong` per line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, FieldError):
                loc += cause.at
            where = ".".join(str(p) for p in loc)
            msg = "is required" if err["type"] == "missing" else (
                "is not a known field" if err["type"] == "extra_forbid" or err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, "))
            line = f"{source}:{line_of(root, loc)}: {where} {msg}".replace(":  ", ": ")
            if line not in problems:
                problems.append(line)
        raise error("\n".join(problems)) from None


def line_of(node: Any, loc: tuple[Any, ...]) -> int:
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
