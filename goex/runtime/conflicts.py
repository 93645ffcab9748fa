"""Who changed what an undo conflicts on: the later entries of the root whose targets or preview
name it, or, when none does, a change made outside goex. Read from the verified journal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..errors import UndoConflict
    from ..journal.read import Reads


def changed_by(journal: "Reads", exc: "UndoConflict") -> list[str]:
    """One line per conflict of `exc`: the later applied entries naming its target (id, session,
    type, actor), or that no later entry names it."""
    entry = journal.entry(exc.entry_id)
    later = [] if entry is None else [
        (e, _named(journal.detail(e.id))) for e in journal.entries(after_seq=entry.seq, status=("applied",))]
    lines = []
    for target, _ in exc.conflicts:
        parts = set(target.split(".", 1))  # "db.table": both named by the entry
        makers = [e for e, named in later if target in named or (len(parts) == 2 and parts <= named)]
        if makers:
            who = ", ".join(f"entry {e.id} of session {e.session} ({e.type} by {e.actor})" for e in makers)
            lines.append(f"{target} was changed since by {who}")
        else:
            lines.append(f"{target} was changed since outside goex (no later entry names it)")
    return lines


def _named(detail: Any) -> set[str]:
    """The names an entry's targets and preview hold (paths, tables, databases)."""
    if detail is None:
        return set()
    names = set(detail.targets)
    for value in detail.preview.values():
        names.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    return names
