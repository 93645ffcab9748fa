"""File actions: the JSON an agent emits, as pydantic models. Paths are relative to the workspace root."""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_MODE = re.compile(r"^0?[0-7]{3,4}$")
#: most folder levels a path may name (deeper trees are not walked by undo)
MAX_PATH_DEPTH = 128


class _FsAction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    if TYPE_CHECKING:  # every action but fs.move names one path (declared by each, with its own default)
        path: str

    def targets(self) -> list[str]:
        return [self.path]

    @field_validator("path", "src", "dst", check_fields=False)
    @classmethod
    def _shallow(cls, value: str) -> str:
        deep = value.count("/") >= MAX_PATH_DEPTH
        if deep and len([p for p in value.split("/") if p not in ("", ".")]) > MAX_PATH_DEPTH:
            raise ValueError(f"the path names more than {MAX_PATH_DEPTH} folder levels")
        return value


Path = Field(min_length=1, max_length=4096, description="Path relative to the workspace root.")


class FsWrite(_FsAction):
    """Create or replace a file (or append to it). Missing parent folders are created."""

    type: Literal["fs.write"] = "fs.write"
    path: str = Path
    content: str = Field(description="Text, or base64 bytes when encoding is 'base64'.")
    encoding: Literal["utf-8", "base64"] = "utf-8"
    append: bool = False

    def data(self) -> bytes:
        if self.encoding == "base64":
            try:
                return base64.b64decode(self.content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"content is not valid base64: {exc}") from None
        return self.content.encode("utf-8")

    @model_validator(mode="after")
    def _decodable(self) -> "FsWrite":
        self.data()
        return self

    @field_validator("content")
    @classmethod
    def _encodable(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "content is not valid Unicode text (lone surrogates); send bytes with encoding 'base64'"
            ) from None
        return value


class FsRead(_FsAction):
    """Read a file; the output is its text, or base64 when encoding is 'base64'."""

    type: Literal["fs.read"] = "fs.read"
    path: str = Path
    encoding: Literal["utf-8", "base64"] = "utf-8"


class FsList(_FsAction):
    """List a folder: name, kind, size and mode of each entry, sorted by name."""

    type: Literal["fs.list"] = "fs.list"
    path: str = Field(default=".", min_length=1, max_length=4096)


class FsDelete(_FsAction):
    """Delete a file, symlink or empty folder; a folder with contents needs recursive=true."""

    type: Literal["fs.delete"] = "fs.delete"
    path: str = Path
    recursive: bool = False


class FsMove(_FsAction):
    """Move or rename src to dst; replacing an existing dst needs overwrite=true."""

    type: Literal["fs.move"] = "fs.move"
    src: str = Path
    dst: str = Path
    overwrite: bool = False

    def targets(self) -> list[str]:
        return [self.src, self.dst]


class FsMkdir(_FsAction):
    """Create a folder and any missing parents."""

    type: Literal["fs.mkdir"] = "fs.mkdir"
    path: str = Path


class FsChmod(_FsAction):
    """Set the permission bits of a file or folder, as an octal string such as "0644"."""

    type: Literal["fs.chmod"] = "fs.chmod"
    path: str = Path
    mode: str = Field(description='Octal permission bits, e.g. "0644" or "755".')

    @field_validator("mode")
    @classmethod
    def _octal(cls, value: str) -> str:
        if not _MODE.match(value):
            raise ValueError(f"mode must be an octal string such as '0644', got {value!r}")
        return value

    def bits(self) -> int:
        return int(self.mode, 8)


FS_ACTIONS = (FsWrite, FsRead, FsList, FsDelete, FsMove, FsMkdir, FsChmod)

class FsPreview(BaseModel):
    """What a file action would do, as the policy reads it."""

    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(description="The paths it names, inside the root (fs.move: source, destination).")
    bytes_written: int | None = Field(None, description="fs.write: bytes it writes.")
    overwrites: bool | None = Field(None, description="fs.write, fs.move: an existing file is replaced.")
    files_deleted: int | None = Field(
        None, description="fs.delete, fs.move: files removed or replaced (folders' contents counted).")
    bytes_deleted: int | None = Field(None, description="fs.delete, fs.move: bytes removed or replaced.")
    folder: bool | None = Field(None, description="fs.delete: the path is a folder.")
    mode: str | None = Field(None, description="fs.chmod: the new mode, four octal digits (\"0644\").")
    world_writable: bool | None = Field(None, description="fs.chmod: the new mode lets anyone write.")
    setuid: bool | None = Field(None, description="fs.chmod: the new mode sets setuid or setgid.")


#: what the adapter registry reads
ACTIONS = FS_ACTIONS
PREVIEW = FsPreview
