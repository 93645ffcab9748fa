"""The code gates: `ruff check goex` and `mypy goex` are clean, and no block of more than 8 lines
inside goex/ stands again elsewhere in goex/ (the same lines, or the same shape with other names,
strings and numbers)."""

from __future__ import annotations

import io
import keyword
import subprocess
import sys
import tokenize
from collections import defaultdict
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "goex"
BIN = Path(sys.executable).parent
BLOCK = 9  # a repeated block of more than 8 lines fails the gate
VARIED = 5  # ... when at least 5 of its lines differ in shape: a run of field declarations or table rows is a list


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / name
    assert exe.exists(), f"{name} is not installed in {BIN}: `./dev test` installs the lint extra"
    return subprocess.run([str(exe), *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    done = _tool("ruff", "check", "--output-format", "concise", "goex")
    assert done.returncode == 0, f"ruff check goex:\n{done.stdout}{done.stderr}"


def test_mypy_is_clean() -> None:
    done = _tool("mypy", "goex")
    assert done.returncode == 0, f"mypy goex:\n{done.stdout}{done.stderr}"


def test_every_package_is_in_the_distribution() -> None:
    """An installed (not editable) goex holds every package of goex/: pyproject lists them by hand."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"


# -- repeated blocks -------------------------------------------------------------------------------

Line = tuple[int, str, str]  # (line number, the line's tokens as written, its shape)
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENCODING, tokenize.ENDMARKER}
# f-strings are one STRING token up to Python 3.11, a run of FSTRING_* tokens from 3.12
_STRINGS = {tokenize.STRING} | {getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                if hasattr(tokenize, name)}


def code_lines(source: str) -> list[Line]:
    """The lines that carry code, each as its tokens (indentation, comments and line breaks inside
    brackets gone) and as its shape (names, strings and numbers replaced by placeholders).
    Import statements and lines of one name or value (a list's items, `else:`) are passed over:
    they repeat without meaning."""
    tokens: dict[int, list[tokenize.TokenInfo]] = defaultdict(list)
    statement: list[tokenize.TokenInfo] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _SKIP:
            statement.append(tok)
        elif tok.type == tokenize.NEWLINE and statement:
            if statement[0].string not in ("import", "from"):
                for t in statement:
                    tokens[t.start[0]].append(t)
            statement = []
    out = []
    for number in sorted(tokens):
        toks = tokens[number]
        if sum(t.type != tokenize.OP for t in toks) < 2:
            continue
        out.append((number, " ".join(t.string for t in toks), " ".join(_shape(t) for t in toks)))
    return out


def _shape(tok: tokenize.TokenInfo) -> str:
    if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
        return "N"
    if tok.type in _STRINGS:
        return "S"
    if tok.type == tokenize.NUMBER:
        return "0"
    return tok.string


def repeated_blocks(files: dict[str, str], size: int = BLOCK) -> list[str]:
    """Places where `size` consecutive code lines stand again, as written or by shape."""
    seen: dict[tuple[str, tuple[str, ...]], list[tuple[str, int, int]]] = defaultdict(list)
    for name, source in sorted(files.items()):
        lines = code_lines(source)
        for i in range(len(lines) - size + 1):
            window = lines[i:i + size]
            if len({line[2] for line in window}) < min(VARIED, size):
                continue
            place = (name, window[0][0], window[-1][0])
            seen["same", tuple(line[1] for line in window)].append(place)
            seen["shape", tuple(line[2] for line in window)].append(place)
    found, reported = [], set()
    for (kind, _), places in seen.items():
        apart = _apart(places)
        for (a, b) in zip(apart, apart[1:]):
            key = (a[0], a[1] // 50, b[0], b[1] // 50)  # one report per region pair, not per window
            if key not in reported:
                reported.add(key)
                found.append(f"{a[0]}:{a[1]}-{a[2]} ~ {b[0]}:{b[1]}-{b[2]} ({kind})")
    return found


def _apart(places: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The places that do not overlap an earlier one (a run of one repeated line overlaps itself)."""
    kept: list[tuple[str, int, int]] = []
    for place in places:
        if not any(k[0] == place[0] and k[1] <= place[2] and place[1] <= k[2] for k in kept):
            kept.append(place)
    return kept


ORIGINAL = """\
def settle(entry, journal):
    record = journal.record(entry.seq)
    if record.get("kind") != "entry":
        raise LookupError(f"{entry.id} is not an entry")
    plan = record.get("plan") or {}
    for op in plan.get("ops", []):
        journal.append("undone", entry=entry.id, op=op["op"])
    after = journal.after(entry.id)
    status = "reverted" if after is None else "applied"
    return status, after, ""
"""


def test_checker_finds_renamed_and_reindented_copies() -> None:
    renamed = (ORIGINAL.replace("record", "body").replace("journal", "store").replace('"undone"', '"gone"')
               .replace("status", "outcome"))
    reindented = "class Undo:\n" + "".join("    " + line + "\n" for line in ORIGINAL.splitlines())
    assert repeated_blocks({"a.py": ORIGINAL, "b.py": ORIGINAL}) == ["a.py:1-9 ~ b.py:1-9 (same)"]
    assert repeated_blocks({"a.py": ORIGINAL, "b.py": renamed}) == ["a.py:1-9 ~ b.py:1-9 (shape)"]
    assert repeated_blocks({"a.py": ORIGINAL, "b.py": reindented}) == ["a.py:1-9 ~ b.py:2-10 (same)"]
    eight = "\n".join(ORIGINAL.splitlines()[:8]) + "\n"
    assert not repeated_blocks({"a.py": ORIGINAL, "b.py": "import os\n" + eight}), "8 lines are allowed"
    fields = "class A:\n" + "".join(f"    f{i}: int\n" for i in range(12))
    assert not repeated_blocks({"a.py": fields, "b.py": fields.replace("A", "B")}), "declarations are a list"


def test_no_block_is_repeated_in_goex() -> None:
    files = {str(p.relative_to(REPO)): p.read_text("utf-8") for p in sorted(PACKAGE.rglob("*.py"))}
    found = repeated_blocks(files)
    assert not found, ("blocks of more than 8 lines stand more than once in goex/ (make one piece of code "
                       "serve both):\n" + "\n".join(found))
