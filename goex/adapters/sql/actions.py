"""SQL actions: one string of SQL (one or several statements) against a named database."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SqlExecute(BaseModel):
    """Run SQL on a database the runtime names. Several statements run as one unit: if one
    fails, none stays applied. Queries return columns and rows (bounded); writes, a row count."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Literal["sql.execute"] = "sql.execute"
    db: str = Field(min_length=1, max_length=200, description="A database name given to the runtime.")
    sql: str = Field(min_length=1, description="One statement, or several separated by ';'.")
    params: list[Any] | dict[str, Any] | None = Field(
        default=None, description="Parameters for a single statement: a list for ?, a mapping for :name.")

    @model_validator(mode="after")
    def _text(self) -> "SqlExecute":
        try:
            self.sql.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("'sql' is not valid Unicode text") from None
        return self

    def targets(self) -> list[str]:
        return [f"{self.db}: {' '.join(self.sql.split())[:200]}"]


SQL_ACTIONS = (SqlExecute,)
