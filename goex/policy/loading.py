"""Finding and reading packs: shipped ones by name, YAML files by path, `extends` resolved."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from ..yamlmodel import line_of, load_yaml, parse_yaml
from .engine import Policy
from .schema import Pack, PolicyError


def shipped_packs() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("goex.policies").iterdir()
                  if p.name.endswith(".yaml"))


def load_policy(spec: "str | Path | Policy") -> Policy:
    """A shipped pack by name (`default`, `permissive`, …), a YAML file path, or a Policy."""
    if isinstance(spec, Policy):
        return spec
    pack, source = _load_pack(spec, seen=())
    return Policy(pack, source)


def _load_pack(spec: "str | Path", seen: tuple[str, ...]) -> tuple[Pack, str]:
    text, source = _read(spec)
    if source in seen:
        raise PolicyError(f"{source}: 'extends' loops back to itself ({' -> '.join(seen + (source,))})")
    pack = parse_pack(text, source)
    if pack.extends is None:
        return pack, source
    try:
        base, _ = _load_pack(pack.extends, seen + (source,))
    except PolicyError as exc:
        if str(exc).startswith(f"{source}:"):
            raise
        _, root = parse_yaml(text, source, PolicyError)
        near = difflib.get_close_matches(pack.extends, shipped_packs(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near and near[0] != pack.extends else ""
        raise PolicyError(f"{source}:{line_of(root, ('extends',))}: extends {pack.extends!r}{hint}: {exc}") from None
    overrides = {r.id for r in pack.rules}
    rules = [r for r in base.rules if r.id not in overrides] + pack.rules
    budgets = {**base.budgets, **pack.budgets}
    confirm = pack.confirm if "confirm" in pack.model_fields_set else base.confirm
    return Pack(name=pack.name, description=pack.description, extends=pack.extends, confirm=confirm,
                budgets=budgets, rules=rules), source


def _read(spec: "str | Path") -> tuple[str, str]:
    name = str(spec)
    if isinstance(spec, str) and "/" not in name and not name.endswith((".yaml", ".yml")):
        entry = resources.files("goex.policies") / f"{name}.yaml"
        if not entry.is_file():
            raise PolicyError(f"no shipped policy pack named {name!r}; choose one of {', '.join(shipped_packs())} "
                              "or give the path of a YAML file")
        return entry.read_text("utf-8"), f"{name} (shipped)"
    path = Path(spec)
    try:
        return path.read_text("utf-8"), str(path)
    except OSError as exc:
        raise PolicyError(f"cannot read policy pack {path}: {exc.strerror}") from None


def parse_pack(text: str, source: str = "<string>") -> Pack:
    """Parse and validate a pack; errors name the file, the line and the problem."""
    return load_yaml(text, Pack, source, PolicyError, "a policy pack: a mapping with 'name' and 'rules'")
