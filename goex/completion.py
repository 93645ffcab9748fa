"""Shell completion scripts for `goex`, generated from the command's own argument parser, so
they always name the commands and flags this version has."""

from __future__ import annotations

import argparse


def commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each command (`policy check` for nested ones) with its flags and choices."""
    out: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
        if prefix:
            words = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
            words += [str(c) for a in p._actions if not a.option_strings and a.choices and
                      not isinstance(a, argparse._SubParsersAction) for c in a.choices]
            subs = [n for a in p._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices]
            out[prefix] = subs + words

    walk(parser, "")
    return out


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` ('bash' or 'zsh'; zsh loads it through bashcompinit)."""
    table = commands(parser)
    top = [c for c in table if " " not in c]
    cases = "\n".join(f'    "{name}") words="{" ".join(flags)}" ;;' for name, flags in table.items())
    body = f"""_goex() {{
  local cur cmd words
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  cmd="${{COMP_WORDS[1]}}"
  if [ "$COMP_CWORD" -ge 3 ] && [ "${{COMP_WORDS[2]:0:1}}" != "-" ]; then cmd="$cmd ${{COMP_WORDS[2]}}"; fi
  if [ "$COMP_CWORD" -eq 1 ]; then
    words="{" ".join(top)} --help --version"
  else
    case "$cmd" in
{cases}
    *) words="" ;;
    esac
  fi
  COMPREPLY=( $(compgen -W "$words" -- "$cur") )
  case "${{COMP_WORDS[COMP_CWORD-1]}}" in
    --root|--journal|--openapi|--compensations|--secrets|--policy) COMPREPLY=( $(compgen -f -- "$cur") ) ;;
  esac
}}
complete -F _goex goex
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body
