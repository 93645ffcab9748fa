"""Post-facto review: what a session did, entry by entry, with diffs, read from the journal.

Each entry is described by its own adapter (`Adapter.describe`), from the verified journal."""

from __future__ import annotations

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
    items = []
    for entry in rt.journal.entries(session=session):
        detail = rt.journal.detail(entry.id)
        assert detail is not None  # listed under the same lock-free snapshot rules: it exists
        try:
            text = rt.adapter(entry.type.split(".", 1)[0]).describe(detail)
        except GoexError as exc:  # an adapter no longer installed: the entry is still listed
            text = detail.error or f"{entry.type} {entry.target} ({exc})"
        items.append(ReviewItem(entry.id, entry.type, entry.target, entry.status, entry.decision,
                                entry.reviewed, text))
    return items
