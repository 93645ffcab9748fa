"""SQL actions: one string of SQL (one or several statements) against a named database."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..values import check_scalar

#: most parameters one statement may take
MAX_PARAMS = 10_000


class SqlExecute(BaseModel):
    """Run SQL on a database the runtime names. Several statements run as one unit: if one
    fails, none stays applied. Queries return columns and rows (bounded); writes, a row count."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, ser_json_bytes="base64")

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
        if "\0" in self.sql:
            raise ValueError("'sql' holds a NUL character, which no database takes in statement text")
        return self

    @field_validator("params")
    @classmethod
    def _typed(cls, params: list[Any] | dict[str, Any] | None) -> list[Any] | dict[str, Any] | None:
        """Each parameter is one value a column can hold (bytes only from Python: journaled as base64)."""
        if params is None:
            return None
        if len(params) > MAX_PARAMS:
            raise ValueError(f"at most {MAX_PARAMS:,} parameters")
        named = params.items() if isinstance(params, dict) else enumerate(params)
        for key, value in named:
            if isinstance(value, (list, dict, tuple)):
                raise ValueError(f"parameter {key!r} is a {type(value).__name__}: each parameter is one value "
                                 "(null, true/false, a number or a string)")
            if not isinstance(value, bytes):
                check_scalar(value, f"parameter {key!r} ")
        return params

    def targets(self) -> list[str]:
        return [f"{self.db}: {' '.join(self.sql.split())[:200]}"]


SQL_ACTIONS = (SqlExecute,)

class SqlPreview(BaseModel):
    """What the statements would do, as the policy reads it (rows from a dry run)."""

    model_config = ConfigDict(extra="forbid")
    db: str = Field(description="The database name the action gives.")
    engine: str = Field(description="sqlite, postgresql or mysql.")
    statements: list[dict[str, Any]] = Field(description="Per statement: kind, tables, where, drop_column, parsed.")
    kinds: list[str] = Field(description="Each statement's kind: select, insert, update, delete, drop, truncate, "
                                         "create, alter, ...")
    tables: list[str] = Field(description="Every table the statements name.")
    where_missing: bool = Field(description="An UPDATE or DELETE has no WHERE.")
    drops: bool = Field(description="A DROP or TRUNCATE.")
    drop_column: bool = Field(description="An ALTER TABLE ... DROP COLUMN.")
    rows: int = Field(description="Rows the statements change, exact (cascades and triggers included).")
    writes: bool = Field(description="Anything but reads.")
    all_rows: list[str] = Field(description="Tables whose every row it changes.")
    creates_trigger: bool = Field(description="It creates a trigger.")


#: what the adapter registry reads
ACTIONS = SQL_ACTIONS
PREVIEW = SqlPreview
