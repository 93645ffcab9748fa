"""Code actions: the JSON an agent emits to run a program on the workspace, in a sandbox."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CodeRun(BaseModel):
    """Run Python or bash with the workspace root as the working directory, in a sandbox.

    Files the code creates, changes or deletes in the workspace are journaled and undoable.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: Literal["code.run"] = "code.run"
    language: Literal["python", "bash"] = "python"
    code: str = Field(min_length=1, description="The program text.")
    timeout_s: float = Field(default=30, gt=0, le=3600, description="Wall-clock limit; the run is killed after it.")
    network: bool = Field(default=False, description="Whether the code may reach the network.")
    memory_mb: int = Field(default=512, ge=16, le=65536, description="Memory limit in MiB.")

    def targets(self) -> list[str]:
        return ["."]


CODE_ACTIONS = (CodeRun,)

class CodePreview(BaseModel):
    """What a run would do, as the policy reads it; its file effects are added once it ran."""

    model_config = ConfigDict(extra="forbid")
    language: str = Field(description="python or bash.")
    network: bool = Field(description="The sandbox has network access.")
    timeout_s: float = Field(description="The time limit, seconds.")
    memory_mb: int = Field(description="The memory limit, MiB.")
    backend: str = Field(description="The sandbox: docker, bwrap, process, or auto before the first run.")
    unsafe: bool = Field(description="It runs with no isolation (the process backend).")
    files: dict[str, list[str]] | None = Field(None, description="Once run: paths created, changed, deleted.")
    files_deleted: int | None = Field(None, description="Once run: files it deleted or replaced.")
    bytes_deleted: int | None = Field(None, description="Once run: bytes it deleted or replaced.")
    bytes_written: int | None = Field(None, description="Once run: bytes it wrote.")


#: what the adapter registry reads
ACTIONS = CODE_ACTIONS
PREVIEW = CodePreview
