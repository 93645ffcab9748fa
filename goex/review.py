"""Post-facto review: what a session did, entry by entry, with diffs, read from the journal."""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Runtime

_MAX_DIFF_LINES = 60


@dataclass(frozen=True)
class ReviewItem:
    entry_id: str
    type: str
    target: str
    status: str
    decision: str
    reviewed: str | None
    detail: str


def review(rt: "Runtime", session: str) -> list[ReviewItem]:
    """Every entry of `session`, oldest first, with what it changed."""
    items = []
    for row in rt.journal.select("SELECT * FROM entries WHERE session = ? ORDER BY seq", (session,)):
        entry = rt.journal.record(row["seq"])
        after = rt.journal.record(row["after_seq"]).get("after") if row["after_seq"] else None
        items.append(ReviewItem(row["id"], row["type"], row["target"], row["status"], row["decision"],
                                row["reviewed"], _detail(rt, entry, after)))
    return items


def _detail(rt: "Runtime", entry: dict[str, Any], after: dict[str, Any] | None) -> str:
    action = rt._rehydrate(entry["action"])
    if entry.get("error"):
        return entry["error"]
    kind = action["type"]
    if kind == "fs.write":
        return _write_diff(rt, entry, action)
    if kind == "fs.delete":
        p = entry.get("preview", {})
        return f"deleted {action['path']}: {p.get('files_deleted', '?')} files, {p.get('bytes_deleted', '?')} bytes"
    if kind == "http.request":
        comp = (after or {}).get("compensation")
        undo = f"; undo: {comp['method']} {comp['url']}" if comp else ""
        status = (after or {}).get("status")
        return f"{action['method']} {action['url']}" + (f" -> {status}" if status else "") + undo
    return f"{kind} {entry['target']}"


def _write_diff(rt: "Runtime", entry: dict[str, Any], action: dict[str, Any]) -> str:
    ops = entry.get("plan", {}).get("ops", [])
    node = next((op["node"] for op in ops if op["op"] == "restore"), None)
    old = b"".join(rt.journal.read_blob(c) for c in node.get("chunks", [])) if node and node["k"] == "f" else b""
    new = action["content"].encode("utf-8") if action.get("encoding", "utf-8") == "utf-8" else None
    if action.get("append"):
        return f"appended {len(action['content'])} characters to {action['path']}"
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8") if new is not None else None
    except UnicodeDecodeError:
        new_text = None
    if new_text is None:
        return f"wrote binary content to {action['path']}"
    diff = difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), f"a/{action['path']}",
                                f"b/{action['path']}", lineterm="")
    return "\n".join(itertools.islice(diff, _MAX_DIFF_LINES)) or f"rewrote {action['path']} unchanged"
