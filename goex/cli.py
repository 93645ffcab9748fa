"""The `goex` command: init, exec, undo, checkpoint, log, approve, review, verify, recover, compact,
schema, mcp, audit, doctor, demo, completion.

Settings come from the root's `config.toml` (`goex init` writes it); flags override them. `--root`
defaults to `$GOEX_ROOT`.

Exit codes of `exec`: 0 all succeeded, 2 malformed input, 3 refused by the policy, 1 any other
failure. Other commands: 0 success, 1 failure, 2 malformed input (a value a flag or a file it names
holds that goex or a library refuses), 4 undo conflict (nothing of that entry undone). No command
prints a traceback: every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

from . import __version__
from .errors import ActionError, ConfigError, GoexError, JournalCorrupt, UndoConflict, UndoDeclined

if TYPE_CHECKING:  # the runtime and the adapters load when a command needs them: `goex --help` stays fast
    from .config import Settings
    from .journal.store import Journal
    from .runtime import Runtime

EXIT_OK, EXIT_FAILED, EXIT_MALFORMED, EXIT_REFUSED, EXIT_CONFLICT = 0, 1, 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return EXIT_OK
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_MALFORMED
    try:
        return args.func(args)
    except UndoDeclined as exc:
        print(f"goex: undo failed, the entry is marked undo_failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UndoConflict as exc:
        if exc.undone:
            print(f"undone before the conflict: {', '.join(exc.undone)}", file=sys.stderr)
        print(f"goex: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except (ActionError, ConfigError) as exc:
        print(f"goex: {_one_line(exc)}", file=sys.stderr)
        return EXIT_MALFORMED
    except GoexError as exc:
        print(f"goex: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as exc:
        # something typed on the command line (a flag's value, a file it names) that a library refused
        print(f"goex: invalid input ({type(exc).__name__}: {_one_line(exc)})", file=sys.stderr)
        return EXIT_MALFORMED
    except KeyboardInterrupt:
        print("goex: interrupted; what finished stays journaled, and `goex recover` settles the rest",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`): nothing more to say
        return EXIT_OK
    except OSError as exc:
        print(f"goex: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a user gets one line, never a traceback
        print(f"goex: unexpected error ({type(exc).__name__}: {_one_line(exc)}); nothing more was done",
              file=sys.stderr)
        return EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    """The error's text on one line (a YAML or JSON error spans several)."""
    return re.sub(r"\s*\n\s*", " ", str(exc)).strip() or type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="goex", description="Safe, journaled, undoable actions for AI agents.")
    p.add_argument("--version", action="version", version=f"goex {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def command(name: str, func: Any, help: str, root: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)

        def usage(args: argparse.Namespace) -> int:
            c.print_help()
            return EXIT_MALFORMED

        c.set_defaults(func=func or usage)
        if root:
            _root_options(c)
        return c

    c = command("init", _init, "Write the root's settings (ROOT/.goex/config.toml) from these flags; every "
                "command, `goex mcp` and goex.Runtime.open(ROOT) read them.")
    _acting_options(c)
    c.add_argument("--force", action="store_true", help="replace an existing settings file")
    c.add_argument("--json", action="store_true", help="print the settings written as JSON")

    c = command("exec", _exec, "Run actions: one JSON object, or '-' for JSON Lines on stdin.")
    c.add_argument("action", metavar="ACTION")
    c.add_argument("--session", help="session id to use or go on with (default: a new one)")
    c.add_argument("--actor", default="agent", help="who acts (default: agent)")
    _acting_options(c)
    c.add_argument("--yes", action="store_true", help="approve every action a rule sends to confirmation")
    c.add_argument("--unsafe", action="store_true",
                   help="allow the process sandbox (no isolation; journaled as unsafe)")
    c.add_argument("--json", action="store_true", help="accepted for symmetry: results are always JSON lines")

    c = command("mcp", _mcp, "Serve the root's actions as MCP tools: stdio by default, streamable HTTP at /mcp "
                "with --http. One MCP connection is one goex session.")
    _acting_options(c)
    c.add_argument("--http", metavar="HOST:PORT", help="serve streamable HTTP at http://HOST:PORT/mcp")
    c.add_argument("--token", help="bearer token clients must send (required for a non-loopback address; "
                                   "default: $GOEX_MCP_TOKEN)")
    c.add_argument("--session", help="session id for the connection (default: from the client's name, unique)")
    c.add_argument("--actor", help="who acts (default: the client's name)")
    c.add_argument("--unsafe", action="store_true",
                   help="allow the process sandbox (no isolation; journaled as unsafe)")

    c = command("undo", _undo, "Undo actions: the last N, back to a checkpoint, a whole session, or all.")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--steps", type=_positive,
                      help="undo the last N changing actions (of --session, or of the whole root)")
    what.add_argument("--to", metavar="CHECKPOINT", help="undo everything after this checkpoint (id or label)")
    what.add_argument("--all", action="store_true", help="undo every session on the root, newest first")
    c.add_argument("--session", help="the session to undo (alone: all of it)")
    c.add_argument("--force", action="store_true", help="restore before-states even over later changes")
    c.add_argument("--json", action="store_true", help="print {undone: [...], requested: N} as JSON")

    for name, func, verb in (("approve", _approve, "Run"), ("reject", _reject, "Refuse")):
        c = command(name, func, f"{verb} an action parked for confirmation (status awaiting_approval).")
        c.add_argument("entry", metavar="ID")
        c.add_argument("--by", default="human", help="who decides (journaled)")
        c.add_argument("--policy", help="policy pack to check the approved action against "
                                          "(default: the one it was parked under)")
        c.add_argument("--json", action="store_true", help="print the outcome as JSON")
    c.add_argument("--reason", default="", help="why (journaled)")

    c = command("review", _review, "Review what a session did (with diffs), then accept it or undo it.")
    c.add_argument("--session", required=True)
    c.add_argument("--by", default="human", help="who reviews (journaled)")
    c.add_argument("--force", action="store_true", help="undo even over later changes")
    verdict = c.add_mutually_exclusive_group()
    verdict.add_argument("--accept", action="store_true", help="mark every entry reviewed; nothing is undone")
    verdict.add_argument("--undo-all", action="store_true", help="undo everything the session did")
    verdict.add_argument("--undo-from", metavar="ID", help="undo from this entry on (it included)")
    c.add_argument("--json", action="store_true", help="print the entries (and what was done) as JSON")

    c = command("policy", None, "Check an action against a pack, or lint a pack.", root=False)
    psub = c.add_subparsers(metavar="WHAT")
    pc = psub.add_parser("check", help="print the decision and matched rules for ACTION without acting")
    pc.set_defaults(func=_policy_check)
    _root_options(pc)
    pc.add_argument("--policy", help="policy pack name or YAML path (default: the root's settings, else default)")
    pc.add_argument("--session", help="count this session's budgets")
    pc.add_argument("--protect", action="append", default=[], metavar="GLOB")
    pc.add_argument("--json", action="store_true", help="accepted for symmetry: the report is always JSON")
    pc.add_argument("action", metavar="ACTION")
    pl = psub.add_parser("lint", help="validate a pack file (and what it extends)")
    pl.set_defaults(func=_policy_lint)
    pl.add_argument("file", metavar="FILE")
    pl.add_argument("--json", action="store_true", help="print the pack's summary as JSON")

    c = command("checkpoint", _checkpoint, "Mark a checkpoint in a session; prints its id.")
    c.add_argument("--session", required=True)
    c.add_argument("--label")
    c.add_argument("--json", action="store_true", help="print {id, session, label} as JSON")

    c = command("log", _log, "List journal entries: id, time, session, actor, type, target, decision, status.")
    c.add_argument("--json", action="store_true", help="print a JSON array (JSON lines with --follow)")
    c.add_argument("--format", choices=["table", "json", "jsonl", "csv"], default=None,
                   help="table (default), json (as --json), jsonl (one object a line) or csv (with a header line)")
    c.add_argument("--session", help="only this session")
    c.add_argument("--type", help="only this action type (fs.write), or a domain (fs.)")
    c.add_argument("--status", action="append", help="only entries with this status (repeatable)")
    c.add_argument("--actor", help="only this actor")
    c.add_argument("--since", type=_since, metavar="WHEN",
                   help="only entries from this time on: ISO 8601 (2026-01-31T12:00) or an age (90s, 15m, 2h, 7d)")
    c.add_argument("--limit", type=_positive, metavar="N", help="only the newest N (listed oldest first)")
    c.add_argument("--follow", "-f", action="store_true", help="keep printing new entries as they are journaled")
    c.add_argument("--checkpoints", action="store_true", help="list the checkpoints instead of the entries")

    c = command("audit", None, "Review audit trails: serve the web viewer, or export a session.", root=False)
    asub = c.add_subparsers(metavar="WHAT")
    serve = asub.add_parser("serve", help="serve the audit viewer (loopback only unless a --token is given)",
                            description="Serve the audit viewer: sessions, timelines, diffs, verification, "
                                        "approvals and undo, live while agents work.")
    serve.set_defaults(func=_audit_serve)
    _root_options(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--token", help="an access token every request must carry (required off loopback); "
                                       "open the printed URL once, the browser keeps it in a cookie")
    serve.add_argument("--by", default=None, help="who approves, accepts and undoes from the viewer (journaled; "
                                                  "default: the user running it)")
    export = asub.add_parser("export", help="print one session as a JSON document, with its verified hashes")
    export.set_defaults(func=_audit_export)
    export.add_argument("--root", required=True, help="the workspace folder")
    export.add_argument("--journal", help="journal folder (default: ROOT/.goex)")
    export.add_argument("--session", required=True)
    export.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of standard output")

    c = command("verify", _verify, "Verify the hash chain, the index and every blob of the journal.")
    c.add_argument("--expect", metavar="HEAD", type=_head,
                   help="the SEQ:HASH head you kept earlier: detects truncation")
    c.add_argument("--json", action="store_true", help="print the report as JSON")

    c = command("recover", _recover, "Finish or revert actions interrupted by a crash.")
    c.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    c = command("compact", _compact, "Fold finished history (undone, refused, failed, or accepted) before an entry "
                "or checkpoint into one verified summary record, and remove the blobs it no longer needs.")
    c.add_argument("--before", required=True, metavar="CHECKPOINT_OR_ENTRY",
                   help="fold every record before this entry id, checkpoint id or checkpoint label")
    c = command("schema", _schema, "Print the JSON Schema of all actions, or tool definitions for a "
                "tool-calling API (--format).", root=False)
    c.add_argument("--format", choices=["jsonschema", "openai", "anthropic", "gemini", "mcp"], default="jsonschema",
                   help="jsonschema (the action union), or one tool per action type in that API's strict form")
    c.add_argument("--union", action="store_true", help="with --format: one tool taking any action, `type` required")
    c.add_argument("--json", action="store_true", help="accepted for symmetry: the output is always JSON")
    c = command("doctor", _doctor, "Say which code.run sandboxes work on this machine, and why not, and which "
                "limits hold in each (measured by probe runs).", root=False)
    c.add_argument("--image", default=None, help="the sandbox image to look for (default: goex-sandbox:2)")
    c.add_argument("--json", action="store_true", help="print the report as one JSON object")
    c.add_argument("--db", action="append", default=[], metavar="NAME=URL",
                   help="also report, for this database, the role or account agent SQL runs as and whether it "
                        "lacks the dangerous privileges (repeatable; relative SQLite paths are under --root)")
    c.add_argument("--root", default=".", help="the workspace relative SQLite paths are under (default: .)")
    c.add_argument("--databases-only", action="store_true", help="skip the sandbox probes (they take seconds)")

    c = command("demo", _demo, "Show goex end to end in a temporary workspace.", root=False)
    c.add_argument("--keep", action="store_true", help="keep the temporary workspace and print its path")

    c = command("completion", _completion, "Print a shell completion script: "
                "`eval \"$(goex completion bash)\"` (or zsh).", root=False)
    c.add_argument("shell", choices=["bash", "zsh"])
    return p


def _root_options(c: argparse.ArgumentParser) -> None:
    """--root and the settings every command reading a root takes (they override the root's config.toml)."""
    root = os.environ.get("GOEX_ROOT") or None
    c.add_argument("--root", required=root is None, default=root, help="the workspace folder (default: $GOEX_ROOT)")
    c.add_argument("--journal", help="journal folder (default: ROOT/.goex)")
    c.add_argument("--db", action="append", default=[], metavar="NAME=URL",
                   help="a database for sql.execute, e.g. main=sqlite:///app.db (repeatable)")
    h = c.add_argument_group("HTTP actions")
    h.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="a host http.request may reach (repeatable; none by default)")
    h.add_argument("--compensations", metavar="FILE", help="compensation routes (YAML or JSON)")
    h.add_argument("--openapi", metavar="FILE", help="derive CRUD compensations from this OpenAPI document")
    h.add_argument("--secrets", metavar="FILE",
                   help="secrets file (YAML); GOEX_SECRET_<NAME> environment variables are read too")


def _acting_options(c: argparse.ArgumentParser) -> None:
    """The settings of commands that act (defaults: the root's config.toml, else goex's)."""
    c.add_argument("--policy", help="policy pack name or YAML path (default: default)")
    c.add_argument("--durability", choices=["fsync", "process"])
    c.add_argument("--protect", action="append", default=[], metavar="GLOB",
                   help="a path glob no action may change (repeatable)")
    c.add_argument("--sandbox", "--backend", dest="sandbox", choices=["auto", "docker", "bwrap", "process"],
                   help="where code.run executes (default: auto = docker if it works here, else bwrap)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _head(text: str) -> str:
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError("a head is SEQ:HASH as `goex verify` prints it")
    return text


def _runtime(args: argparse.Namespace, **kw: Any) -> "Runtime":
    """The runtime of --root: its settings file, overridden by the flags given and by `kw` (whose
    None values mean "not given")."""
    return _open(args, _settings(args), **kw)


def _open(args: argparse.Namespace, settings: "Settings", **kw: Any) -> "Runtime":
    from .runtime import Runtime

    options = settings.runtime_options(Path(args.root))
    options.update({k: v for k, v in kw.items() if v is not None})
    return Runtime(args.root, journal=args.journal, **options)


def _settings(args: argparse.Namespace) -> "Settings":
    """The root's settings with the flags given laid over them."""
    from .config import load_settings

    if not Path(args.root).is_dir():
        raise GoexError(f"workspace root {args.root} is not an existing folder; create it first")
    settings = load_settings(args.root, args.journal)
    http = settings.http.model_copy(update={k: v for k, v in (
        ("allow_hosts", args.allow_host), ("openapi", _absolute(args.openapi)),
        ("compensations", _absolute(args.compensations)), ("secrets", _absolute(args.secrets))) if v})
    update: dict[str, Any] = {"http": http, "databases": {**settings.databases, **_databases(args.db)}}
    for name in ("policy", "durability", "sandbox"):
        if getattr(args, name, None):
            update[name] = getattr(args, name)
    if str(update.get("policy", "")).endswith((".yaml", ".yml")):
        update["policy"] = _absolute(update["policy"])
    if getattr(args, "protect", None):
        update["protected"] = list(args.protect)
    return settings.model_copy(update=update)


def _absolute(path: str | None) -> str | None:
    """A file named on the command line, relative to the current folder (the settings file keeps
    paths relative to the root)."""
    return os.path.abspath(path) if path else None


def _journal_folder(args: argparse.Namespace) -> Path:
    return Path(args.journal) if args.journal else Path(args.root) / ".goex"


def _existing(args: argparse.Namespace, **kw: Any) -> "Runtime":
    """A runtime on a journal that exists: commands that act on recorded entries never create one."""
    if not _journal_folder(args).is_dir():
        raise _no_journal(args)
    return _runtime(args, **kw)


def _no_journal(args: argparse.Namespace) -> GoexError:
    return GoexError(f"there is no journal in {_journal_folder(args)}: nothing was recorded there yet (give the "
                     "journal folder with --journal if it is elsewhere)")


def _databases(specs: list[str]) -> dict[str, str]:
    """`--db NAME=URL` flags as a mapping."""
    named = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"--db takes NAME=URL, e.g. main=sqlite:///app.db; got {spec!r}")
        named[name] = url
    return named


# -- init ------------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from .config import write_settings
    from .policy import load_policy

    settings = _settings(args)
    load_policy(settings.runtime_options(Path(args.root))["policy"])  # a pack that does not load is not written
    file = write_settings(settings, args.root, args.journal, replace=args.force)
    if args.json:
        _emit({"file": str(file), "settings": settings.model_dump()})
    else:
        print(f"wrote {file}")
    return EXIT_OK


# -- exec ------------------------------------------------------------------------------------------


def _exec(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    if args.yes:
        approver: Any = lambda request: True  # noqa: E731
    elif args.action != "-" and sys.stdin.isatty() and sys.stderr.isatty():
        approver = _prompt
    else:
        approver = "pending"  # unattended: parked for `goex approve` / `goex reject`
    with _runtime(args, approver=approver, allow_unsafe=args.unsafe) as rt:
        session = rt.session(actor=args.actor, session_id=args.session)
        for line, raw in _actions(args.action, sys.stdin, rt.max_action_bytes):
            where = {"line": line} if line else {}
            try:
                result = session.execute(raw)
            except ActionError as exc:
                _emit({"ok": False, "entry_id": None, "session": session.id, "status": "malformed",
                       "error": str(exc), **where})
                worst = _worse(worst, EXIT_MALFORMED)
                continue
            except GoexError as exc:  # the runtime cannot act at all (journal unusable, recovery needed)
                _emit({"ok": False, "entry_id": None, "session": session.id, "status": "error", "error": str(exc),
                       **where})
                return EXIT_FAILED
            _emit({**result.to_json(), **where})
            if not result.ok:
                refused = result.status in ("denied", "awaiting_approval")
                worst = _worse(worst, EXIT_REFUSED if refused else EXIT_FAILED)
    return worst


def _prompt(request: Any) -> bool:
    print(f"\ngoex: {request.type} needs confirmation: {request.decision.reason}", file=sys.stderr)
    if request.summary:
        print(request.summary, file=sys.stderr)
    print("Allow it? [y/N] ", end="", file=sys.stderr, flush=True)  # stdout carries only the JSON results
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _review(args: argparse.Namespace) -> int:
    with _existing(args, policy="permissive") as rt:
        session = rt.session(session_id=args.session)
        items = session.review()
        if not items:
            raise GoexError(f"session {args.session!r} has no entries in the journal at {rt.journal.folder}")
        for item in [] if args.json else items:
            seen = f", reviewed by {item.reviewed}" if item.reviewed else ""
            print(f"== {item.entry_id}  {item.type}  {item.target}  [{item.decision}, {item.status}{seen}]")
            print("   " + item.detail.replace("\n", "\n   "))
        choice = _review_choice(args)
        done: dict[str, list[str]] = {}
        if choice == "accept":
            done["accepted"] = session.accept(by=args.by)
        elif choice == "all":
            done["undone"] = session.rollback(force=args.force)
        elif choice:
            done["undone"] = session.undo_from(choice, force=args.force)
    if args.json:
        _emit({"session": args.session, "entries": [vars(item) for item in items], **done})
    elif "accepted" in done:
        print(f"accepted {len(done['accepted'])} entries")
    elif "undone" in done:
        print(f"undone: {', '.join(done['undone']) or 'nothing'}")
    return EXIT_OK


def _review_choice(args: argparse.Namespace) -> str | None:
    if args.accept:
        return "accept"
    if args.undo_all:
        return "all"
    if args.undo_from:
        return args.undo_from
    if args.json or not sys.stdin.isatty():
        return None  # just the report
    answer = input("\n[a]ccept, [u]ndo all, undo from an entry (its id, e.g. e12), or [q]uit: ").strip().lower()
    named = {"a": "accept", "accept": "accept", "u": "all", "undo": "all"}
    return named.get(answer, answer if answer[:1] == "e" else None)


def _approve(args: argparse.Namespace) -> int:
    with _existing(args, policy="permissive") as probe:
        parked = probe.parked(args.entry)
    settings = _settings(args)  # the settings it was parked under fill what these do not name
    hosts = sorted(set(settings.http.allow_hosts) | set(parked.get("allow_hosts", [])))
    settings = settings.model_copy(update={
        "databases": {**parked.get("databases", {}), **settings.databases},
        "http": settings.http.model_copy(update={"allow_hosts": hosts}),
        "policy": args.policy or _pack_spec(parked.get("policy", "default")),
        "protected": list(parked.get("protected", []))})
    with _open(args, settings) as rt:
        result = rt.approve(args.entry, by=args.by)
    _emit(result.to_json())
    return EXIT_OK if result.ok else EXIT_REFUSED if result.status in ("denied", "awaiting_approval") else EXIT_FAILED


def _pack_spec(source: str) -> str:
    """A Policy.source back into what load_policy takes ('strict (shipped)' -> 'strict')."""
    return source.removesuffix(" (shipped)")


def _reject(args: argparse.Namespace) -> int:
    with _existing(args, policy="permissive") as rt:
        rt.reject(args.entry, by=args.by, reason=args.reason)
    _say(args, f"rejected {args.entry}", {"rejected": args.entry, "by": args.by, "reason": args.reason})
    return EXIT_OK


def _say(args: argparse.Namespace, text: str, data: Any) -> None:
    """`data` as one JSON line with --json, else `text`."""
    if getattr(args, "json", False):
        _emit(data)
    else:
        print(text)


def _policy_check(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        if not _journal_folder(args).is_dir():  # checking records nothing: no journal is made for it
            args.journal = stack.enter_context(tempfile.TemporaryDirectory(prefix="goex-check-"))
        return _check(args, stack.enter_context(_runtime(args, policy=args.policy, protected=args.protect)))


def _check(args: argparse.Namespace, rt: "Runtime") -> int:
    try:
        decision, preview = rt.session(session_id=args.session).check(args.action)
    except ActionError as exc:
        print(f"goex: {exc}", file=sys.stderr)
        return EXIT_MALFORMED
    _emit({"decision": decision.verdict, "rules": [m.__dict__ for m in decision.matches],
           "cost": decision.cost, "severity": decision.severity, "preview": preview})
    return EXIT_OK if decision.verdict == "allow" else EXIT_REFUSED


def _policy_lint(args: argparse.Namespace) -> int:
    from .policy import PolicyError, load_policy

    try:
        policy = load_policy(Path(args.file))
    except PolicyError as exc:  # one problem per line, each with its file:line
        for line in str(exc).splitlines():
            print(f"goex: {line}", file=sys.stderr)
        return EXIT_FAILED
    budgets = ", ".join(f"{k}={v:,}" for k, v in policy.budgets.items()) or "none"
    _say(args, f"{args.file}: OK, pack {policy.name!r}: {len(policy.rules)} rules, budgets {budgets}, "
               f"confirmations {'refused' if policy.confirm == 'deny' else 'asked'}",
         {"file": args.file, "ok": True, "pack": policy.name, "rules": len(policy.rules), "budgets": policy.budgets,
          "confirm": policy.confirm})
    return EXIT_OK


def _actions(arg: str, stdin: TextIO, limit: int) -> Iterator[tuple[int, Any]]:
    """(input line number, action text); the number is 0 for a single ACTION argument."""
    if arg != "-":
        yield 0, arg
        return
    number = 0
    while True:
        line = stdin.buffer.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stdin.buffer.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # drain the oversized line without holding it
            yield number, line  # parse_action reports it as over the limit
        elif line.strip():
            yield number, line  # bytes: parse_action reports non-UTF-8 input itself


def _worse(a: int, b: int) -> int:
    rank = {EXIT_OK: 0, EXIT_FAILED: 1, EXIT_REFUSED: 2, EXIT_MALFORMED: 3}
    return a if rank[a] >= rank[b] else b


def _emit(obj: Any) -> None:
    try:
        line = json.dumps(obj, ensure_ascii=False, default=str)
        line.encode("utf-8")
    except UnicodeEncodeError:  # names that are not UTF-8 travel as \udcXX escapes, and come back so
        line = json.dumps(obj, default=str)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- undo / checkpoint -----------------------------------------------------------------------------


def _undo(args: argparse.Namespace) -> int:
    if args.all and args.session:
        raise GoexError("--all undoes every session; to undo one session give only --session ID")
    with _existing(args, policy="permissive") as rt:
        if args.session and not rt.log(args.session):
            raise GoexError(f"session {args.session!r} has no entries in the journal at {rt.journal.folder}")
        if args.all:
            undone = rt.rollback_all(force=args.force)
        elif args.to:
            found = rt.journal.checkpoints(session=args.session, name=args.to, newest_first=True)
            if not found:
                raise GoexError(f"no checkpoint {args.to!r}" + (f" in session {args.session}" if args.session else "")
                                + "; `goex checkpoint` makes one")
            undone = rt.session(session_id=found[0].session).rollback(to=args.to, force=args.force)
        elif args.steps is not None:
            if args.session:
                undone = rt.session(session_id=args.session).undo(args.steps, force=args.force)
            else:
                undone = rt.undo_last(args.steps, force=args.force)
            of = f"session {args.session}" if args.session else "the root"
            if len(undone) < args.steps:
                print(f"goex: {of}: undid {len(undone)} of the {args.steps} requested (no more changes to undo)",
                      file=sys.stderr)
        elif args.session:
            undone = rt.session(session_id=args.session).rollback(force=args.force)
        else:
            raise GoexError("say what to undo: --steps N, --to CHECKPOINT, --session ID or --all")
    listed = f": {', '.join(undone)}" if undone else ""
    _say(args, f"undone {len(undone)} entr{'y' if len(undone) == 1 else 'ies'}{listed}",
         {"undone": undone, "requested": args.steps})
    return EXIT_FAILED if args.steps is not None and len(undone) < args.steps else EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    with _runtime(args, policy="permissive") as rt:
        cp = rt.session(session_id=args.session).checkpoint(args.label)
    _say(args, cp, {"id": cp, "session": args.session, "label": args.label})
    return EXIT_OK


# -- log / verify / recover ------------------------------------------------------------------------


def _reader(args: argparse.Namespace) -> "Journal | None":
    """The journal of --root (or --journal) opened to read, without its lock; None when there is none."""
    from .journal.store import Journal

    folder = Path(args.journal) if args.journal else Path(args.root) / ".goex"
    if not Path(args.root).is_dir():
        raise GoexError(f"workspace root {args.root} is not an existing folder")
    if not (folder / "journal.db").is_file():
        return None
    return Journal.reader(folder)


def _log(args: argparse.Namespace) -> int:
    journal = _reader(args)
    rows: list[dict[str, Any]] = []
    shown: dict[str, str] = {}
    if journal is not None:
        try:
            if args.checkpoints:
                rows = [c.to_json() for c in journal.checkpoints(session=args.session)
                        if args.since is None or c.time >= args.since]
            else:
                entries = _entries(journal, args)
                shown = {e.id: e.status for e in entries}
                rows = [e.to_json() for e in entries]
        finally:
            journal.close()
    rows = with_iso_times(rows[-args.limit:] if args.limit else rows)
    cols = ["id", "time", "session", "label"] if args.checkpoints else None
    fmt = args.format or ("json" if args.json else "table")
    if fmt in ("jsonl", "csv"):
        from .audit.export import log_csv, log_jsonl

        sys.stdout.write(log_jsonl(rows) if fmt == "jsonl" else log_csv(rows))
    elif fmt == "json" and not args.follow:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    elif fmt == "json":
        for row in rows:
            _emit(row)
    else:
        print(format_log(rows, cols, colour=_colour()))
    if args.follow and not args.checkpoints:
        try:
            _follow(args, shown)
        except KeyboardInterrupt:
            pass  # how a follow ends
    return EXIT_OK


def _entries(journal: "Journal", args: argparse.Namespace) -> list[Any]:
    """The entries `goex log`'s filters select, oldest first."""
    found = journal.entries(session=args.session, type=args.type, status=args.status, since=args.since)
    return [e for e in found if args.actor is None or e.actor == args.actor]


def _follow(args: argparse.Namespace, shown: dict[str, str]) -> None:
    """Print entries as they are journaled, until interrupted; an entry whose status changes
    (undone, approved) is printed again. `shown`: the status printed of each entry so far."""
    from .journal.store import Journal

    folder = Path(args.journal) if args.journal else Path(args.root) / ".goex"
    while True:
        time.sleep(0.25)
        if not (folder / "journal.db").is_file():
            continue
        journal = Journal.reader(folder)
        try:
            entries = _entries(journal, args)
        finally:
            journal.close()
        for e in entries:
            if shown.get(e.id) == e.status:
                continue
            shown[e.id] = e.status
            row = with_iso_times([e.to_json()])[0]
            if args.json:
                _emit(row)
            else:
                print(format_log([row], colour=_colour()).splitlines()[1], flush=True)


def _since(text: str) -> float:
    """A time as Unix seconds: ISO 8601 (UTC unless it says), or an age such as 90s, 15m, 2h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if age:
        return time.time() - float(age[1]) * units[age[2]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("a time is ISO 8601 (2026-01-31T12:00) or an age (90s, 15m, 2h, 7d)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _colour() -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def with_iso_times(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Journal times (Unix seconds) as ISO 8601 UTC, in place; returns the rows."""
    for row in rows:
        row["time"] = datetime.fromtimestamp(row["time"], timezone.utc).isoformat(timespec="milliseconds")
    return rows


_STATUS_COLOURS = {"applied": "32", "undone": "36", "denied": "31", "failed": "31", "undo_failed": "31",
                   "awaiting_approval": "33", "needs_review": "33", "rejected": "35"}


def format_log(rows: list[dict[str, Any]], cols: list[str] | None = None, *, colour: bool = False) -> str:
    """The rows as a table with full ISO 8601 times; statuses coloured when `colour`."""
    cols = cols or ["id", "time", "session", "actor", "type", "target", "decision", "status"]
    table = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [min(max(len(row[i]) for row in table), 48) for i in range(len(cols))]
    lines = []
    for n, row in enumerate(table):
        cells = [cell[:48].ljust(w) for cell, w in zip(row, widths, strict=True)]
        if colour and n and "status" in cols:
            i = cols.index("status")
            code = _STATUS_COLOURS.get(row[i])
            cells[i] = f"\x1b[{code}m{cells[i]}\x1b[0m" if code else cells[i]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _audit_export(args: argparse.Namespace) -> int:
    from .audit.export import export_session

    journal = _reader(args)
    if journal is None:
        raise _no_journal(args)
    try:
        document = export_session(journal, args.session)
    finally:
        journal.close()
    text = json.dumps(document, ensure_ascii=False, indent=1) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _audit_serve(args: argparse.Namespace) -> int:
    from .audit.app import ViewerConfig, serve

    config = ViewerConfig(root=Path(args.root), journal=Path(args.journal) if args.journal else None,
                          open_runtime=lambda **kw: _existing(args, **kw), by=args.by, token=args.token)
    return serve(config, host=args.host, port=args.port)


def _verify(args: argparse.Namespace) -> int:
    from .journal.verify import verify

    journal = _reader(args)
    if journal is None:
        raise _no_journal(args)
    try:
        report = verify(journal, expect_head=args.expect)
    except JournalCorrupt as exc:
        if args.json:
            _emit({"ok": False, "error": str(exc)})
        print(f"journal CORRUPT: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        journal.close()
    _say(args, f"journal OK: {report.records} records, {report.blobs} blobs; head {report.head}",
         {"ok": True, "records": report.records, "blobs": report.blobs, "head": report.head,
          "warnings": list(report.warnings)})
    for warning in [] if args.json else report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def _recover(args: argparse.Namespace) -> int:
    if not _journal_folder(args).is_dir():
        _say(args, f"nothing to recover: there is no journal in {_journal_folder(args)}", {"ok": True, "outcomes": {}})
        return EXIT_OK
    with _runtime(args, policy="permissive") as rt:
        report = rt.recover()
    if args.json:
        _emit({"ok": report.ok, "outcomes": report.outcomes})
    elif not report.outcomes:
        print("nothing to recover: no entry was interrupted")
    for eid, outcome in [] if args.json else report.outcomes.items():
        print(f"{eid}: {outcome}")
    return EXIT_OK if report.ok else EXIT_FAILED


def _compact(args: argparse.Namespace) -> int:
    with _existing(args, policy="permissive") as rt:
        folded = rt.compact(args.before)
    entries = ", ".join(f"{n} {status}" for status, n in folded["entries"].items()) or "no entries"
    print(f"compacted records up to {folded['upto']}: {folded['records']} records ({entries}) folded into one; "
          f"{folded['blobs_removed']} blobs removed")
    return EXIT_OK


def _doctor(args: argparse.Namespace) -> int:
    """Sections (one per subject) measured on this machine; `--json` prints them as one object."""
    from .adapters.code import backends

    report: dict[str, Any] = {}
    ok = True
    if not args.databases_only:
        sandboxes = backends.report(args.image or backends.DEFAULT_IMAGE)
        uses = next((n for n in backends.AUTO_ORDER if sandboxes[n]["works"]), None)
        report.update(sandboxes=sandboxes, code_run_uses=uses)
        ok = uses is not None
    if args.db:
        report["databases"] = _database_privileges(args.db, Path(args.root))
        ok = ok and all(d["safe"] for d in report["databases"].values())
    if args.json:
        print(json.dumps(report, indent=1))
        return EXIT_OK if ok else EXIT_FAILED
    if "sandboxes" in report:
        _print_sandboxes(report["sandboxes"])
        print(f"code.run uses: {report['code_run_uses'] or 'nothing (no sandbox works here)'}")
    for name, d in report.get("databases", {}).items():
        unsafe = "UNSAFE: " + (", ".join(d["dangerous"]) or "see detail")
        verdict = "lacks the dangerous privileges" if d["safe"] else unsafe
        print(f"db {name} ({d.get('engine', '?')}): agent SQL runs as {d['runs_as']}; {verdict}")
        if d.get("detail"):
            print(f"         {d['detail']}")
    return EXIT_OK if ok else EXIT_FAILED


def _database_privileges(specs: list[str], root: Path) -> dict[str, dict[str, Any]]:
    """Per database: who agent SQL runs as and which dangerous privileges it holds (asked of the
    database itself; a database that cannot be reached is reported unsafe, with the reason)."""
    from .adapters.sql.adapter import engine_for, parse_databases

    out: dict[str, dict[str, Any]] = {}
    for name, db in parse_databases(_databases(specs), root.resolve()).items():
        try:
            engine = engine_for(db)
            try:
                out[name] = {"engine": db.kind, **engine.agent_privileges()}
            finally:
                engine.close()
        except GoexError as exc:
            out[name] = {"engine": db.kind, "runs_as": "?", "safe": False, "dangerous": [],
                         "detail": f"could not be checked: {exc}"}
    return out


def _print_sandboxes(sandboxes: dict[str, Any]) -> None:
    from .adapters.code.backends import LIMIT_NAMES

    for name, b in sandboxes.items():
        if not b["works"]:
            print(f"{name:8} unavailable: {b['why']}")
            continue
        broken = [(LIMIT_NAMES[k], v["detail"]) for k, v in b["limits"].items() if not v["holds"]]
        if b["unsafe"]:
            head = "works (no isolation: only with --unsafe, journaled as unsafe)"
        elif broken:
            head = "works but " + ", ".join(f"the {k} limit does not hold" for k, _ in broken)
            head += f": {broken[0][1]}" if len(broken) == 1 else " (see below)"
        else:
            head = "works; every limit holds"
        print(f"{name:8} {head}")
        for key, v in b["limits"].items():
            print(f"         {LIMIT_NAMES[key]:17} {'holds' if v['holds'] else 'DOES NOT HOLD'}: {v['detail']}")


def _schema(args: argparse.Namespace) -> int:
    from .actions import action_schema
    from .tool_schemas import tools

    if args.format == "jsonschema":
        print(json.dumps(action_schema(), indent=1))
    else:
        print(json.dumps(tools(format=args.format, union=args.union), indent=1))
    return EXIT_OK


def _mcp(args: argparse.Namespace) -> int:
    from .mcp import serve

    token = args.token or os.environ.get("GOEX_MCP_TOKEN") or None
    with _runtime(args, approver="pending", allow_unsafe=args.unsafe) as rt:
        serve(rt, http=args.http, token=token, session=args.session, actor=args.actor)
    return EXIT_OK


def _completion(args: argparse.Namespace) -> int:
    from .completion import script

    print(script(_parser(), args.shell))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
