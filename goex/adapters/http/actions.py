"""HTTP actions: one request, as the JSON an agent emits."""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..values import check_json, check_text

Method = Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
#: RFC 9110 field names (tokens) and values (visible ASCII, space and tab): anything else is
#: refused here rather than failing, value in hand, inside the HTTP library
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


@functools.lru_cache(maxsize=512)
def parse_url(url: str) -> httpx.URL:
    """`httpx.URL(url)`, parsed once per URL text: an action's URL is read when it is validated,
    prepared, checked and sent (an `httpx.URL` is immutable, so one parse serves them all)."""
    return httpx.URL(url)


class HttpRequest(BaseModel):
    """Send one HTTP request. `{{secret:NAME}}` in the URL, headers or body is filled by goex
    from its secret store; the agent never sees the value."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    type: Literal["http.request"] = "http.request"
    method: Method
    url: str = Field(min_length=1, max_length=8192, description="Absolute http(s) URL.")
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json", description="A JSON body (sets Content-Type).")
    body: str | None = Field(default=None, description="A text body, sent as UTF-8.")
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("headers")
    @classmethod
    def _sendable_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:100]!r} is not an HTTP token "
                                 "(letters, digits and !#$%&'*+-.^_`|~)")
            if not HEADER_VALUE.fullmatch(value):
                raise ValueError(f"header {name!r} holds characters an HTTP header cannot carry (only printable "
                                 "ASCII, space and tab; no line breaks): percent-encode it or send it in the body")
        return headers

    @field_validator("json_body")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        check_json(value)
        return value

    @field_validator("body")
    @classmethod
    def _text_body(cls, value: str | None) -> str | None:
        if value is not None:
            check_text(value)
        return value

    @model_validator(mode="after")
    def _one_body(self) -> "HttpRequest":
        try:
            url = parse_url(self.url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ValueError(f"'url' is not a valid URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"'url' must be an absolute http:// or https:// URL with a host, got {self.url!r}")
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either 'json' or 'body', not both")
        content_type = next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")
        if self.body is not None and "json" in content_type.lower() and "{{secret:" not in self.body:
            try:
                json.loads(self.body)
            except json.JSONDecodeError as exc:
                raise ValueError(f"'body' is not JSON but the Content-Type says {content_type}: {exc.msg}") from None
        return self

    def targets(self) -> list[str]:
        return [f"{self.method} {self.url}"]

    def journal_form(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


HTTP_ACTIONS = (HttpRequest,)

class HttpPreview(BaseModel):
    """What a request would do, as the policy reads it."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description="GET, POST, PUT, PATCH, DELETE, ...")
    host: str = Field(description="The host, lower case.")
    path: str = Field(description="The URL path, as sent.")
    secrets: list[str] = Field(description="Names of the secrets its placeholders fill in.")
    collection: bool = Field(description="A DELETE on a collection (a route that creates under this path).")
    route: str | None = Field(description="The compensation route it matched (\"POST /items\"), if any.")
    reversible: bool = Field(description="A compensation can undo it (reads are reversible).")
    kind: str = Field(description="read, create, update, delete, or irreversible (no compensation).")


#: what the adapter registry reads
ACTIONS = HTTP_ACTIONS
PREVIEW = HttpPreview
