"""Custom tools: a user's Python function as an action type (filled in below)."""

from __future__ import annotations


class Tool:
    """A custom tool."""
