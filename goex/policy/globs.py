"""Globs: action types (`fs.*`, fnmatch) and workspace paths (`*` in one component, `**` across)."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable


def type_regex(globs: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for a list of action type globs; None (anything) for an empty list."""
    globs = list(globs)
    return re.compile("|".join(fnmatch.translate(t) for t in globs)) if globs else None


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


def literal_prefix(glob: str) -> str | None:
    """The fixed leading part of an anchored glob (`tests/**` -> `tests/`): a folder holding it
    holds protected paths. None for globs that match at any depth."""
    if "/" not in glob.strip("/"):
        return None
    return re.split(r"[*?\[]", glob.lstrip("/"), maxsplit=1)[0]


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
