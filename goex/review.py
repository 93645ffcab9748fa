"""Post-facto review: what a session did, entry by entry, with diffs, read from the journal.

Each entry is described by its own adapter (`Adapter.describe`), from the verified journal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import GoexError

if TYPE_CHECKING:
    from .runtime import Runtime


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
    from .journal.store import named_entries

    entries = rt.journal.entries(session=session)
    if not entries:
        return []
    # every later record naming one of them (captured rows, output, undo), found in one pass and
    # then read again through the chain, so what is shown is what the chain vouches for
    wanted = {e.id for e in entries}
    naming: dict[str, list[int]] = {}
    for seq, body, _ in rt.journal.records(entries[0].seq):
        for eid in wanted.intersection(named_entries(json.loads(body))):
            naming.setdefault(eid, []).append(seq)
    vouched = rt.journal.records_at([s for seqs in naming.values() for s in seqs])
    items = []
    for entry in entries:
        detail = rt.journal.detail(entry.id)
        assert detail is not None  # listed under the same lock-free snapshot rules: it exists
        detail.records = [vouched[s] for s in naming.get(entry.id, [])]
        try:
            text = rt.adapter(entry.type.split(".", 1)[0]).describe(detail)
        except GoexError as exc:  # an adapter no longer installed: the entry is still listed
            text = detail.error or f"{entry.type} {entry.target} ({exc})"
        items.append(ReviewItem(entry.id, entry.type, entry.target, entry.status, entry.decision,
                                entry.reviewed, text))
    return items
