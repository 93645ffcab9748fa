"""Reviewing audit trails: the web viewer (`goex audit serve`) and exports of the journal.

`goex.audit.app.create_app(ViewerConfig(...))` is the viewer as an ASGI app; `export_session(journal, id)` one
session as a JSON document with its verified hashes; `log_jsonl` / `log_csv` the log's rows.
"""

from .export import EXPORT_FORMAT, export_session, log_csv, log_jsonl

__all__ = ["EXPORT_FORMAT", "export_session", "log_csv", "log_jsonl"]
