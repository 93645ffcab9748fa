"""Custom tools: a user's Python function as an action type `tool.<name>`, run through the same
pipeline as the built-in actions (prepared, decided by the policy on its preview, journaled
write-ahead, applied, undone by the user's compensation function), and listed with them as a
tool definition (`Runtime.tools(format=...)`, the MCP server).

```python
rt = goex.Runtime(root)

@rt.tool(undo=lambda args, output: outbox.recall(output["id"]))
def send_email(to: str, subject: str, body: str = "") -> dict:
    "Send an email."
    return {"id": outbox.send(to, subject, body)}

rt.session().execute({"type": "tool.send_email", "to": "a@example.com", "subject": "hi"})
```

A tool lives in the runtime that registered it: the journal keeps its arguments and output, and
undo calls its compensation from a runtime that has it registered (from one that does not, the
undo is declined and the entry stays undoable). A tool without `undo` is irreversible: its
preview says `reversible: false`, which the shipped packs ask about (`tool.irreversible`). If
`run` raises, goex takes it that nothing happened; a process killed while a tool ran leaves the
entry for review (`needs_review`), since goex cannot see a tool's effect.
"""

from __future__ import annotations

import inspect
import json
import threading
from typing import Any, Callable, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .adapters.base import Adapter, Applied, Context, GetBlob, Outcome, Prepared, Preview, PutBlob
from .errors import ActionError, ActionFailed, GoexError, UndoDeclined

PREFIX = "tool"


class ToolPreview(Preview):
    tool: str = Field(description="the custom tool's name")
    reversible: bool = Field(description="the tool has a compensation (undo) function")
    targets: list[str] = Field(default_factory=list, description="what the tool says it acts on")
    details: dict[str, Any] = Field(default_factory=dict, description="the tool's own preview (shown, not matched)")


ACTIONS: tuple[type[BaseModel], ...] = ()  # each runtime registers its own
PREVIEW = ToolPreview


class Tool:
    """A custom tool. Subclass it: set `name`, `Args` (a pydantic model of the arguments) and a
    docstring, implement `run(args)` (returning JSON-able output), and optionally `undo(args,
    output)`, `preview(args)` (fields an approver sees) and `targets(args)`. Register it with
    `runtime.add_tool(MyTool())`."""

    name: str
    Args: type[BaseModel]

    @property
    def description(self) -> str:
        return inspect.cleandoc(type(self).__doc__ or "") or self.name

    @property
    def reversible(self) -> bool:
        return type(self).undo is not Tool.undo

    def run(self, args: Any) -> Any:
        raise NotImplementedError(f"the tool {self.name} implements run(args)")

    def undo(self, args: Any, output: Any) -> None:
        raise UndoDeclined(f"the tool {self.name} has no undo: it cannot be taken back")

    def preview(self, args: Any) -> dict[str, Any]:
        return {}

    def targets(self, args: Any) -> list[str]:
        return [self.name]


class FunctionTool(Tool):
    """A tool made from a function: its parameters are the arguments (typed by their
    annotations), its docstring the description."""

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None, undo: Callable[[Any, Any], Any] | None,
                 preview: Callable[[Any], dict[str, Any]] | None = None,
                 targets: Callable[[Any], list[str]] | None = None, description: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        self._undo, self._preview, self._targets = undo, preview, targets
        self._description = description or inspect.cleandoc(fn.__doc__ or "") or self.name
        self.Args = _args_model(fn, self.name)

    @property
    def description(self) -> str:
        return self._description

    @property
    def reversible(self) -> bool:
        return self._undo is not None

    def run(self, args: Any) -> Any:
        return self.fn(**{k: getattr(args, k) for k in self.Args.model_fields})

    def undo(self, args: Any, output: Any) -> None:
        if self._undo is None:
            super().undo(args, output)
            return
        self._undo(args, output)

    def preview(self, args: Any) -> dict[str, Any]:
        return self._preview(args) if self._preview else {}

    def targets(self, args: Any) -> list[str]:
        return list(self._targets(args)) if self._targets else [self.name]


def _args_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise GoexError(f"the tool {name}: *args and **kwargs cannot be described to a model; name each argument")
        annotation = param.annotation if param.annotation is not param.empty else Any
        default = param.default if param.default is not param.empty else ...
        fields[param.name] = (annotation, default)
    return create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)


class Tools:
    """The custom tools of one runtime, by action type, with their action models."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_type: dict[str, Tool] = {}
        self.models: dict[str, type[BaseModel]] = {}
        self._schemas: dict[str, dict[str, Any]] | None = None

    def add(self, tool: Tool) -> str:
        name = getattr(tool, "name", "")
        if not isinstance(name, str) or not name.replace("_", "a").isalnum() or not name[:1].isalpha():
            raise GoexError(f"a tool's name is letters, digits and '_', starting with a letter; got {name!r}")
        action_type = f"{PREFIX}.{name}"
        with self._lock:
            self.by_type[action_type] = tool
            self.models[action_type] = _action_model(tool, action_type)
            self._schemas = None
        return action_type

    def parse(self, action: Any) -> Any:
        """The action model of `action` when it is one of these tools' (a dict or a model), else None."""
        if isinstance(action, BaseModel) and type(action) in self.models.values():
            return action
        kind = action.get("type") if isinstance(action, dict) else None
        model = self.models.get(kind) if isinstance(kind, str) else None
        if model is None:
            return None
        try:
            return model.model_validate(action)
        except ValidationError as exc:
            from .actions import describe_validation_error

            raise ActionError(f"{kind}: " + describe_validation_error(exc, depth=0)) from None

    def schemas(self) -> dict[str, dict[str, Any]]:
        """Each tool's action as JSON Schema, by action type (for `goex.tools(extra=...)`)."""
        with self._lock:
            if self._schemas is None:
                self._schemas = {}
                for action_type, model in self.models.items():
                    schema = model.model_json_schema()
                    schema["description"] = self.by_type[action_type].description
                    self._schemas[action_type] = schema
            return json.loads(json.dumps(self._schemas))


def _action_model(tool: Tool, action_type: str) -> type[BaseModel]:
    literal = cast(Any, Literal)[action_type]

    def targets(self: Any) -> list[str]:
        return [str(t) for t in tool.targets(self)]

    model = create_model(f"Tool_{tool.name}", __base__=tool.Args, type=(literal, action_type))
    model.model_config["extra"] = "forbid"
    model.model_config["frozen"] = True
    setattr(model, "targets", targets)  # what every action model answers  # noqa: B010
    model.model_rebuild(force=True)
    return model


class ToolAdapter(Adapter):
    """Runs the runtime's custom tools (`Context.settings["tools"]`) through the adapter contract."""

    prefix = PREFIX
    actions = ACTIONS
    preview = ToolPreview

    def __init__(self, tools: Tools):
        self.tools = tools

    @classmethod
    def create(cls, context: Context) -> "ToolAdapter":
        tools = context.settings.get("tools")
        return cls(tools if isinstance(tools, Tools) else Tools())

    def _tool(self, action_type: str) -> Tool:
        tool = self.tools.by_type.get(action_type)
        if tool is None:
            raise UndoDeclined(f"the custom tool {action_type} is not registered in this runtime; undo it from a "
                               f"runtime that registers it (Runtime.tool / Runtime.add_tool)")
        return tool

    def prepare(self, action: Any) -> Prepared:
        tool = self._tool(action.type)
        targets = action.targets()
        preview = ToolPreview(tool=tool.name, reversible=tool.reversible, targets=targets,
                              details=_jsonable(tool.preview(action)))
        return Prepared(action, targets, preview.model_dump())

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        args = prepared.action.model_dump(mode="json", exclude={"type"})
        ops = [{"op": "compensate"}] if self.tools.by_type[prepared.action.type].reversible else []
        return {"ops": ops, "tool": prepared.action.type, "args": args}

    def apply(self, prepared: Prepared) -> Applied:
        tool = self._tool(prepared.action.type)
        try:
            output = _jsonable(tool.run(prepared.action))
        except (ActionFailed, GoexError):
            raise
        except Exception as exc:  # noqa: BLE001 - the tool's own failure, reported as the action's
            raise ActionFailed(f"{prepared.action.type}: {type(exc).__name__}: {exc}") from None
        return Applied(output, {"output": output})

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> dict[str, Any] | None:
        if after is None:
            return {"compensated": False}  # run raised, or never finished: nothing to take back
        tool = self._tool(plan["tool"])
        args = self.tools.models[plan["tool"]].model_validate({"type": plan["tool"], **plan["args"]})
        try:
            tool.undo(args, after.get("output"))
        except UndoDeclined:
            raise
        except Exception as exc:  # noqa: BLE001 - the compensation failed: nothing is claimed undone
            raise UndoDeclined(f"the undo of {plan['tool']} failed: {type(exc).__name__}: {exc}") from None
        return {"compensated": True}

    def recover(self, plan: dict[str, Any], action: dict[str, Any], get_blob: GetBlob) -> Outcome:
        return "review", {}, "a custom tool was interrupted; goex cannot see whether its effect happened"

    def describe(self, entry: Any) -> str:
        return entry.error or f"{entry.type}({json.dumps(entry.plan.get('args', {}), default=str)[:200]})"


def _jsonable(value: Any) -> Any:
    """`value` as JSON values (what the journal and the tool result carry)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError) as exc:
        raise ActionFailed(f"a custom tool returned what is not JSON: {exc}") from None
