"""PostgreSQL engine, through psycopg 3.

Two ways of keeping what undo needs, chosen per action:

* Row changes (INSERT, UPDATE, DELETE, MERGE, upserts, and whatever they cause through foreign-key
  actions and user triggers) are captured row by row. Inside the action's own transaction goex
  creates an AFTER ROW trigger on every table the statements can reach (the tables they name,
  their inheritance children, tables reachable through ON DELETE/UPDATE CASCADE / SET NULL /
  SET DEFAULT, and every user table when a user trigger, rule, view or user function is
  involved), and drops it again before the commit. PostgreSQL DDL is transactional, so no other
  client ever sees these triggers. Each trigger appends the old and new row (in the row type's
  text form, which round-trips every type exactly) to a temporary table; at capture time the
  log is reduced to its net effect per table: the rows the action added and the rows it
  removed. Undo deletes the added rows and puts the removed ones back, in one transaction with
  `session_replication_role = replica`, so neither user triggers nor foreign-key actions fire.
  A single INSERT, UPDATE or DELETE of a table nothing else hangs on (the plain path) needs no
  trigger: the statement runs with a RETURNING clause that gives the same rows, believed only
  when the server's own counts agree (see `_Plain` and `PostgresEngine._rehearse_plain`).

* Statements that change the schema (DDL, TRUNCATE, and SQL sqlglot cannot read) take the
  simplest exact route: a `pg_dump` of every user schema taken before the action, restored in
  one transaction on undo. A fingerprint taken in the same snapshot as the dump is checked
  again when the action starts, so a dump that is already stale is never used.

Sequences advance outside transactions; their positions are read before and after each action
(and after dry runs and failed actions) and set back.

Everything goex keeps in the database lives in schema `goex` (its functions) and in a
temporary table of its own session; neither appears in `dump()`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from typing import Any, Callable, Iterator, NamedTuple, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
import psycopg.errors
import sqlglot
from psycopg import generators, pq
from psycopg import sql as pgsql
from psycopg._queries import PostgresQuery  # the conversion `Cursor.execute` makes of a query and its params
from psycopg.adapt import Transformer
from sqlglot import exp

from ...errors import ActionFailed, Unforceable
from ...journal.store import CHUNK
from .common import GetBlob, PutBlob, SqlRefused, Staged, UndoRefused, format_rows, kind_of
from .server import Dirty, Plan, ServerEngine
from .server import convert_params as _convert

__all__ = ["PostgresEngine", "convert_params", "dump"]

VERSION = "v6"
R = TypeVar("R")
INLINE_LIMIT = 32 * 1024  # capture data above this size goes to blobs
ROW_KINDS = {"select", "insert", "update", "delete", "merge", "union", "intersect", "except", "values"}
_USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'goex') "
            "AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'")

# Transaction control, session state, and work that cannot run inside a transaction: refused by
# their first word ({word}), and why.
_TXN = "{word} is not allowed: goex runs each action as one transaction and commits it itself; send the " \
    "statements without transaction control"
_OUTSIDE = "{word} is not allowed: it cannot run inside the action's transaction or reaches beyond it; run " \
    "maintenance outside goex"
_PREPARED = "is not allowed: prepared statements outlive the action and hide what runs; send the statement itself"
_REFUSED_FIRST = {
    **dict.fromkeys(("begin", "start", "commit", "rollback", "savepoint", "release", "end", "abort"), _TXN),
    **dict.fromkeys(("set", "reset"), "{word} is not allowed: session settings (session_replication_role, "
                    "search_path, roles, ...) can switch off or bypass undo capture; qualify names in the "
                    "statements instead"),
    **dict.fromkeys(("vacuum", "cluster", "reindex", "checkpoint", "discard", "load"), _OUTSIDE),
    "copy": "COPY is not allowed: it reads or writes server files, programs or the client stream outside the "
            "action; use INSERT ... VALUES / INSERT ... SELECT or SELECT",
    "prepare": f"PREPARE (and PREPARE TRANSACTION) {_PREPARED}",
    "execute": f"EXECUTE of a prepared statement {_PREPARED}",
    "deallocate": f"DEALLOCATE {_PREPARED}",
}
# Objects outside the database, or that act on every session: goex cannot take them back.
_REFUSED_PHRASES = dict.fromkeys((
    "alter role", "alter user", "alter group", "create group", "drop group", "create tablespace", "drop tablespace",
    "alter tablespace", "create subscription", "alter subscription", "drop subscription", "create event trigger",
    "alter event trigger", "drop event trigger", "alter default privileges", "reassign owned", "drop owned",
    "security label", "create server", "alter server", "drop server", "create user mapping", "alter user mapping",
    "drop user mapping", "create foreign data wrapper", "alter foreign data wrapper", "drop foreign data wrapper",
    "import foreign schema", "alter large object", "create publication", "alter publication", "drop publication",
), "{words} is not allowed: it changes roles, servers, replication or defaults beyond this database's schemas, "
   "which goex cannot take back; run it outside goex")
_REFUSED_FUNCS = {
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_file_write", "pg_file_rename", "pg_file_unlink",
    "pg_file_sync", "lo_import", "lo_export", "lo_unlink", "lo_create", "lo_creat", "lo_from_bytea", "lo_put",
    "lo_open", "lo_truncate", "lowrite", "pg_terminate_backend", "pg_cancel_backend", "set_config",
    "pg_reload_conf", "pg_rotate_logfile", "pg_promote", "pg_switch_wal", "pg_create_restore_point",
    "pg_logical_emit_message", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
    "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup", "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot", "pg_drop_replication_slot", "pg_replication_origin_create",
    "pg_import_system_collations", "txid_current_snapshot", "pg_export_snapshot",
}

# Every user sequence's position into `seqs` (plpgsql; declares sq record, seqs jsonb, lv bigint,
# ic boolean): shared by goex.sequences and the plain path's functions, which run it inline.
# A called sequence's position is read by pg_sequence_last_value (no statement parsed per
# sequence); one not called since it was created or set (NULL there) by its own SELECT.
_SEQUENCES = f"""FOR sq IN SELECT format('%I.%I', n.nspname, c.relname) AS q, pg_sequence_last_value(c.oid) AS lv
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'S' AND {_USER_NS} LOOP
    IF sq.lv IS NULL THEN
      EXECUTE format('SELECT last_value, is_called FROM %s', sq.q) INTO lv, ic;
    ELSE
      lv := sq.lv;
      ic := true;
    END IF;
    seqs := seqs || jsonb_build_object(sq.q, jsonb_build_array(lv, ic));
  END LOOP;"""

_SETUP = f"""
CREATE SCHEMA IF NOT EXISTS goex;
COMMENT ON SCHEMA goex IS 'goex: undo support for actions run through goex; do not edit';

CREATE OR REPLACE FUNCTION goex.capture_{VERSION}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
BEGIN
  INSERT INTO pg_temp.goex_log(rel, old, new) VALUES (TG_RELID, OLD::text, NEW::text);
  RETURN NULL;
END
$goex$;

CREATE OR REPLACE FUNCTION goex.sequences_{VERSION}() RETURNS jsonb LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE sq record; seqs jsonb := '{{}}'; lv bigint; ic boolean;
BEGIN
  {_SEQUENCES}
  RETURN seqs;
END
$goex$;

CREATE OR REPLACE FUNCTION goex.counts_{VERSION}() RETURNS jsonb LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE r record; out jsonb := '{{}}'; cnt bigint;
BEGIN
  FOR r IN SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS q FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') AND {_USER_NS} LOOP
    EXECUTE format('SELECT count(*) FROM ONLY %s', r.q) INTO cnt;
    out := out || jsonb_build_object(r.oid::text, cnt);
  END LOOP;
  RETURN out;
END
$goex$;

-- The session an action runs in: goex's temporary tables, owned by goex's role (the action cannot
-- read or forge them), and nothing left by an earlier action. Starts capture once per transaction.
CREATE OR REPLACE FUNCTION goex.begin_{VERSION}() RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE stray text;
BEGIN
  IF current_setting('session_replication_role') <> 'origin' THEN
    RAISE EXCEPTION 'goex session: session_replication_role is %', current_setting('session_replication_role');
  END IF;
  SELECT string_agg(c.relname, ', ') INTO stray FROM pg_class c
    WHERE c.relnamespace = pg_my_temp_schema() AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
      AND c.relkind IN ('r', 'v', 'm', 'S', 'f', 'p');
  IF stray IS NOT NULL THEN
    RAISE EXCEPTION 'goex session: temporary objects left by an action: %', stray;
  END IF;
  IF to_regclass('pg_temp.goex_txn') IS NULL THEN  -- (IF NOT EXISTS would send a notice every action)
    CREATE TEMP TABLE goex_log (rel oid, old text, new text);
    CREATE TEMP TABLE goex_txn (xid xid8, done boolean);
  END IF;
  DELETE FROM pg_temp.goex_txn WHERE xid <> pg_current_xact_id();
  IF EXISTS (SELECT 1 FROM pg_temp.goex_txn) THEN
    RAISE EXCEPTION 'goex: capture already started in this transaction';
  END IF;
  INSERT INTO pg_temp.goex_txn VALUES (pg_current_xact_id(), false);
END
$goex$;

CREATE OR REPLACE FUNCTION goex.start_{VERSION}(names text[], funcs text[], everything boolean, install boolean,
                                                path text)
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE
  rels oid[] := '{{}}'; grown oid[]; r oid; k "char"; nm text; t oid; done oid[] := '{{}}'; reach boolean;
BEGIN
  PERFORM goex.begin_{VERSION}();
  DELETE FROM pg_temp.goex_log;
  IF NOT everything THEN
    PERFORM set_config('search_path', path, true);  -- the statements' names, as they will resolve
    FOREACH nm IN ARRAY names LOOP
      BEGIN
        r := to_regclass(nm);
      EXCEPTION WHEN OTHERS THEN r := NULL;
      END;
      CONTINUE WHEN r IS NULL;
      SELECT relkind INTO k FROM pg_class WHERE oid = r;
      IF k IN ('r', 'p') THEN
        rels := rels || r;
      ELSIF k = 'f' THEN
        RAISE EXCEPTION 'goex cannot undo writes to the foreign table %; write to it outside goex', r::regclass;
      ELSIF k IN ('v', 'm') THEN
        everything := true;
      END IF;
    END LOOP;
    PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
    IF EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE p.proname = ANY(funcs) AND n.nspname NOT IN ('pg_catalog', 'information_schema')) THEN
      everything := true;
    END IF;
  END IF;
  reach := EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = ANY(rels))
        OR EXISTS (SELECT 1 FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = ANY(rels)
                   AND (c.confdeltype IN ('c', 'n', 'd') OR c.confupdtype IN ('c', 'n', 'd')));
  IF NOT everything THEN
    LOOP
      SELECT coalesce(array_agg(DISTINCT x), '{{}}') INTO grown FROM (
        SELECT unnest(rels) AS x
        UNION SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = ANY(rels)
        UNION SELECT c.conrelid FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = ANY(rels)
          AND (c.confdeltype IN ('c', 'n', 'd') OR c.confupdtype IN ('c', 'n', 'd'))
      ) s;
      EXIT WHEN cardinality(grown) = cardinality(rels);
      rels := grown;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = ANY(rels) AND NOT g.tgisinternal)
       OR EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = ANY(rels) AND w.rulename <> '_RETURN') THEN
      everything := true;
    END IF;
  END IF;
  IF NOT install AND NOT everything AND NOT reach THEN
    RETURN jsonb_build_object('rels', '[]'::jsonb, 'plain', true, 'seqs', goex.sequences_{VERSION}());
  END IF;
  IF everything THEN
    SELECT coalesce(array_agg(c.oid), '{{}}') INTO rels FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind = 'r' AND {_USER_NS};
  END IF;
  FOR t IN SELECT c.oid FROM pg_class c WHERE c.oid = ANY(rels) AND c.relkind = 'r' ORDER BY c.oid LOOP
    EXECUTE format('CREATE TRIGGER goex_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION goex.capture_{VERSION}()', t::regclass);
    done := done || t;
  END LOOP;
  RETURN jsonb_build_object('rels', to_jsonb(done), 'plain', false, 'seqs', goex.sequences_{VERSION}());
END
$goex$;

-- What an action may not leave behind because undo cannot take it back: large objects.
CREATE OR REPLACE FUNCTION goex.outside_{VERSION}() RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE xmin = pg_current_xact_id()::xid) THEN
    RAISE EXCEPTION 'goex: the statements create or change large objects, which goex cannot undo; '
      'store the bytes in a bytea column instead';
  END IF;
END
$goex$;

CREATE OR REPLACE FUNCTION goex.finish_{VERSION}(rels oid[]) RETURNS jsonb LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE
  t oid; rec record; counts jsonb; tables jsonb := '[]';
BEGIN
  -- once per transaction, after start: a second call (smuggled in by the action) aborts the action
  UPDATE pg_temp.goex_txn SET done = true WHERE xid = pg_current_xact_id() AND NOT done;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'goex: capture was not started in this transaction, or already finished';
  END IF;
  PERFORM goex.outside_{VERSION}();
  FOREACH t IN ARRAY rels LOOP
    IF EXISTS (SELECT 1 FROM pg_class WHERE oid = t) THEN
      EXECUTE format('DROP TRIGGER IF EXISTS goex_capture ON %s', t::regclass);
    END IF;
  END LOOP;
  FOR rec IN
    SELECT d.rel, format('%I.%I', n.nspname, c.relname) AS name, d.rows, d.vals,
      (SELECT jsonb_agg(a.attname ORDER BY k.o) FROM pg_index i
         CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(num, o)
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num
         WHERE i.indrelid = d.rel AND i.indisprimary) AS key,
      (SELECT jsonb_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = d.rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS columns,
      (SELECT md5(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum))
         FROM pg_attribute a WHERE a.attrelid = d.rel AND a.attnum > 0 AND NOT a.attisdropped) AS shape
    FROM (
      SELECT g.rel, jsonb_agg(jsonb_build_array(g.j, g.n) ORDER BY g.j) AS rows, array_agg(g.j) AS vals
      FROM (
        SELECT u.rel, u.j, sum(u.s) AS n FROM (
          SELECT l.rel, l.new AS j, 1 AS s FROM pg_temp.goex_log l WHERE l.new IS NOT NULL
          UNION ALL SELECT l.rel, l.old, -1 FROM pg_temp.goex_log l WHERE l.old IS NOT NULL
        ) u GROUP BY u.rel, u.j HAVING sum(u.s) <> 0
      ) g GROUP BY g.rel
    ) d JOIN pg_class c ON c.oid = d.rel JOIN pg_namespace n ON n.oid = c.relnamespace
    ORDER BY 2
  LOOP
    counts := NULL;
    IF rec.key IS NULL THEN
      EXECUTE format('SELECT jsonb_object_agg(s.j, s.c) FROM (SELECT ROW(x.*)::text AS j, count(*) AS c '
                     'FROM ONLY %s x WHERE ROW(x.*)::text = ANY($1) GROUP BY 1) s', rec.rel::regclass)
        INTO counts USING rec.vals;
      counts := coalesce(counts, '{{}}');
    END IF;
    tables := tables || jsonb_build_array(jsonb_build_object(
      'table', rec.name, 'key', rec.key, 'columns', rec.columns, 'shape', rec.shape, 'rows', rec.rows,
      'counts', counts));
  END LOOP;
  DELETE FROM pg_temp.goex_log;
  RETURN jsonb_build_object('xid', pg_current_xact_id()::text, 'tables', tables,
                            'seqs', goex.sequences_{VERSION}());
END
$goex$;

-- Tables whose every row held before the transaction was changed or removed (at least 2 rows):
-- no row of it is left that this transaction did not write. `target`/`net`/`touched` describe a
-- single UPDATE or DELETE run without capture triggers.
CREATE OR REPLACE FUNCTION goex.all_rows_{VERSION}(target oid, net bigint, touched bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE r record; out jsonb := '[]';
BEGIN
  FOR r IN
    SELECT l.rel, sum((l.new IS NOT NULL)::int - (l.old IS NOT NULL)::int) AS net FROM pg_temp.goex_log l
      GROUP BY l.rel HAVING count(l.old) >= 2
    UNION ALL SELECT target, net WHERE target IS NOT NULL AND touched >= 2
  LOOP
    out := out || goex.emptied_{VERSION}(r.rel, r.net);
  END LOOP;
  RETURN out;
END
$goex$;

-- [the table's name] when this transaction wrote every row `rel` holds and at least 2 rows were
-- there before it (`net`: rows it added), else [].
CREATE OR REPLACE FUNCTION goex.emptied_{VERSION}(rel oid, net bigint) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE untouched boolean; cnt bigint;
BEGIN
  IF rel IS NULL OR NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = rel AND relkind = 'r') THEN
    RETURN '[]';
  END IF;
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s x WHERE x.xmin <> $1)', rel::regclass)
    INTO untouched USING pg_current_xact_id()::xid;
  IF untouched THEN
    RETURN '[]';
  END IF;
  EXECUTE format('SELECT count(*) FROM ONLY %s', rel::regclass) INTO cnt;
  IF cnt - net < 2 THEN
    RETURN '[]';
  END IF;
  RETURN (SELECT jsonb_build_array(CASE WHEN n.nspname = 'public' THEN c.relname::text
                                         ELSE n.nspname || '.' || c.relname END)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel);
END
$goex$;

-- The plain path: one INSERT, UPDATE or DELETE of one table that nothing but the statement's own
-- rows can change, captured by the statement itself (RETURNING, see `_Plain`) without any DDL.
-- `plain_start` takes the table as the statement's session resolved its name, locks it as the
-- statement will (ROW EXCLUSIVE: no trigger, rule or foreign key can be added until the
-- transaction ends), then reads the catalog and raises SQLSTATE GXNP1 unless the table is plain:
-- an ordinary permanent table with an immediate primary key, no inheritance children, user
-- triggers, rules, row security or foreign keys that act on its rows' removal or change, no user
-- function and no view, materialized view or foreign table among the relations it names (`named`,
-- resolved as the statement resolves them), `keys` (when given) its primary key with pg_catalog equality,
-- every name in `idents` written as quote_ident writes it, and readable by the session user
-- (RETURNING reads it). It checks the session as `begin` does. Returns the table, its key, the
-- version of its columns (see `plain_shape`), the sequences, and the transaction's
-- insert/update/delete counts on it so far.
CREATE OR REPLACE FUNCTION goex.plain_start_{VERSION}(r regclass, idents text[], keys text[], funcs text[],
                                                      named regclass[])
RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE rel record; stray text; w text; nm regclass; more boolean; sq record; seqs jsonb := '{{}}'; lv bigint;
  ic boolean;
BEGIN
  IF r IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'GXNP1', MESSAGE = 'goex plain: no such table';
  END IF;
  EXECUTE format('LOCK TABLE ONLY %s IN ROW EXCLUSIVE MODE', r);
  -- One query reads what every table needs; each other check is a statement of its own, run only
  -- when the table's flags or the statement call for it (a subquery costs its executor start-up
  -- even when it never runs, and those start-ups were most of this function's time).
  SELECT c.relkind, c.relpersistence, c.relrowsecurity, c.relhassubclass, c.relhastriggers, c.relhasrules,
    format('%I.%I', n.nspname, c.relname) AS name, has_table_privilege(session_user, r, 'SELECT') AS readable,
    (SELECT string_agg(a.xmin::text, ',' ORDER BY a.attnum) FROM pg_attribute a
     WHERE a.attrelid = r AND a.attnum > 0) AS version, pk.key, pk.ok
    INTO rel
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
      LATERAL (SELECT array_agg(a.attname::text ORDER BY k.o) AS key, bool_and(EXISTS (SELECT 1 FROM pg_operator o
                 WHERE o.oprname = '=' AND o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprleft = a.atttypid
                   AND o.oprright = a.atttypid)) AS ok
               FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(num, o)
               JOIN pg_attribute a ON a.attrelid = r AND a.attnum = k.num
               WHERE i.indrelid = r AND i.indisprimary AND i.indimmediate) pk
    WHERE c.oid = r;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'GXNP1', MESSAGE = 'goex plain: no such table';
  END IF;
  IF rel.relkind <> 'r' OR rel.relpersistence = 't' THEN
    RAISE EXCEPTION USING ERRCODE = 'GXNP1', MESSAGE = 'goex plain: not an ordinary table';
  END IF;
  IF current_setting('session_replication_role') <> 'origin' THEN
    RAISE EXCEPTION '%', 'goex session: session_replication_role is ' || current_setting('session_replication_role');
  END IF;
  IF pg_my_temp_schema() <> 0 THEN  -- (a session that never had a temporary object has none)
    SELECT string_agg(t.relname, ', ') INTO stray FROM pg_class t
      WHERE t.relnamespace = pg_my_temp_schema() AND t.relkind IN ('r', 'v', 'm', 'S', 'f', 'p')
        AND t.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user);
    IF stray IS NOT NULL THEN
      RAISE EXCEPTION '%', 'goex session: temporary objects left by an action: ' || stray;
    END IF;
  END IF;
  -- (relhassubclass, relhastriggers, relhasrules: true once a child, trigger or rule was added,
  -- and a foreign key referencing the table adds triggers to it; false, there is none)
  more := rel.relrowsecurity OR NOT rel.readable;  -- (neither is ever null)
  FOREACH w IN ARRAY coalesce(idents || keys, '{{}}') LOOP
    IF quote_ident(w) <> w THEN
      more := true;
    END IF;
  END LOOP;
  IF NOT more AND rel.relhassubclass THEN
    more := EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = r);
  END IF;
  IF NOT more AND rel.relhastriggers THEN
    more := EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = r AND NOT g.tgisinternal)
      OR EXISTS (SELECT 1 FROM pg_constraint k WHERE k.contype = 'f' AND k.confrelid = r
                 AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd')));
  END IF;
  IF NOT more AND rel.relhasrules THEN
    more := EXISTS (SELECT 1 FROM pg_rewrite x WHERE x.ev_class = r);
  END IF;
  IF NOT more AND cardinality(funcs) > 0 THEN
    more := EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE p.proname = ANY(funcs) AND n.nspname NOT IN ('pg_catalog', 'information_schema'));
  END IF;
  FOREACH nm IN ARRAY coalesce(named, '{{}}') LOOP  -- (the table itself is an ordinary one: checked above)
    IF NOT more AND nm <> r THEN
      more := coalesce((SELECT v.relkind NOT IN ('r', 'p') FROM pg_class v WHERE v.oid = nm), false);
    END IF;
  END LOOP;
  IF more THEN
    RAISE EXCEPTION USING ERRCODE = 'GXNP1', MESSAGE = 'goex plain: the statement can change more than its rows';
  END IF;
  IF rel.key IS NULL OR (keys IS NOT NULL AND (rel.key <> keys OR NOT rel.ok)) THEN
    RAISE EXCEPTION USING ERRCODE = 'GXNP1', MESSAGE = 'goex plain: no immediate primary key, or not the one given';
  END IF;
  PERFORM set_config('goex.plain_rel', r::oid::text, true);
  {_SEQUENCES}
  RETURN jsonb_build_object('rel', r::oid::bigint, 'table', rel.name, 'key', to_jsonb(rel.key), 'version', rel.version,
    'counts', jsonb_build_array(r::oid::bigint, pg_stat_get_xact_tuples_inserted(r),
                                pg_stat_get_xact_tuples_updated(r), pg_stat_get_xact_tuples_deleted(r)),
    'seqs', seqs);
END
$goex$;

-- A table's columns (those undo writes) and shape (names and types, which undo checks are unchanged).
-- `plain_start`'s version (the row versions of its columns' catalog rows) changes whenever they do.
CREATE OR REPLACE FUNCTION goex.plain_shape_{VERSION}(rel oid) RETURNS jsonb LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
  SELECT jsonb_build_object(
    'columns', (SELECT jsonb_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
    'shape', (SELECT md5(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum))
              FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped))
$goex$;

-- The primary key of the table `name` resolves to on `path`, when its names need no quotes; else NULL.
CREATE OR REPLACE FUNCTION goex.plain_key_{VERSION}(name text, path text) RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE r oid; key text[];
BEGIN
  PERFORM set_config('search_path', path, true);
  BEGIN
    r := to_regclass(name);
  EXCEPTION WHEN OTHERS THEN r := NULL;
  END;
  PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
  SELECT array_agg(a.attname::text ORDER BY k.o) INTO key
    FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(num, o)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num
    WHERE i.indrelid = r AND i.indisprimary;
  RETURN CASE WHEN EXISTS (SELECT 1 FROM unnest(key) i WHERE quote_ident(i) <> i) THEN NULL ELSE key END;
END
$goex$;

-- After the statement: the transaction, the sequences, and the counts on the table `plain_start` took.
CREATE OR REPLACE FUNCTION goex.plain_finish_{VERSION}() RETURNS jsonb LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
DECLARE r oid := nullif(current_setting('goex.plain_rel', true), '')::oid; sq record; seqs jsonb := '{{}}';
  lv bigint; ic boolean;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE xmin = pg_current_xact_id()::xid) THEN
    PERFORM goex.outside_{VERSION}();  -- (its error)
  END IF;
  {_SEQUENCES}
  RETURN jsonb_build_object('xid', pg_current_xact_id()::text, 'seqs', seqs, 'counts', jsonb_build_array(r::bigint,
    pg_stat_get_xact_tuples_inserted(r), pg_stat_get_xact_tuples_updated(r), pg_stat_get_xact_tuples_deleted(r)));
END
$goex$;

-- The capture log in short: entries, and the net rows added per table.
CREATE OR REPLACE FUNCTION goex.logged_{VERSION}() RETURNS jsonb LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$
BEGIN
  RETURN jsonb_build_object('count', (SELECT count(*) FROM pg_temp.goex_log), 'net',
    (SELECT coalesce(jsonb_object_agg(rel::text, n), '{{}}') FROM (SELECT rel, sum((new IS NOT NULL)::int
     - (old IS NOT NULL)::int) AS n FROM pg_temp.goex_log GROUP BY rel) s));
END
$goex$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA goex FROM PUBLIC;
"""




# -- parameters ------------------------------------------------------------------------------------


def convert_params(statement: str, params: Any, dialect: str = "postgres") -> tuple[str, Any]:
    """`statement` and `params` in psycopg's style (see `server.convert_params`)."""
    return _convert(statement, params, dialect, PostgresEngine.PARAM_NAME)


# -- statement plans -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _plan(statement: str) -> tuple[bool, tuple[str, ...], tuple[str, ...], str, bool, str | None]:
    """(row capture suffices, tables named (quoted, qualified), function names, kind, whether it is
    a single plain INSERT/UPDATE/DELETE whose row count is what it changes in the tables it names,
    the table a plain UPDATE/DELETE writes)."""
    try:
        tree = sqlglot.parse_one(statement, read="postgres")
    except sqlglot.errors.SqlglotError:
        return False, (), (), "", False, None
    if not isinstance(tree, exp.Expression):
        return False, (), (), "", False, None
    kind = kind_of(tree, statement)
    rows = kind in ROW_KINDS and not isinstance(tree, exp.Command) and tree.find(exp.Into) is None
    tables = set()
    for table in tree.find_all(exp.Table):
        parts = [p for p in (table.args.get("catalog"), table.args.get("db"), table.this) if p is not None]
        if not parts or not all(isinstance(p, exp.Identifier) for p in parts):
            continue
        tables.add(".".join('"' + (p.name if p.quoted else p.name.lower()).replace('"', '""') + '"' for p in parts))
    funcs = {func.name.lower() for func in tree.find_all(exp.Anonymous) if func.name}
    writes = list(tree.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge))
    # upserts and MERGE may change rows a count does not attribute: they run with capture
    simple = rows and len(writes) == 1 and (kind in ("update", "delete") or (
        kind == "insert" and tree.args.get("conflict") is None))
    target = tree.args.get("this") if kind in ("update", "delete") else None
    name: str | None = None
    if isinstance(target, exp.Table) and isinstance(target.this, exp.Identifier):
        parts = [p for p in (target.args.get("db"), target.this) if isinstance(p, exp.Identifier)]
        name = ".".join('"' + (p.name if p.quoted else p.name.lower()).replace('"', '""') + '"' for p in parts)
    return rows, tuple(sorted(tables)), tuple(sorted(funcs)), kind, simple, name


def _lexically_plain(text: str) -> bool:
    """Whether PostgreSQL's lexer reads `text` to its end in its first state, whatever the
    server's settings: strings and quoted names close where this scan says (no backslash
    anywhere, so escapes never matter; `''` and `""` are the only quotes inside them), and
    outside them no dollar quote, comment or backslash. Then a RETURNING clause appended to the
    statement is read as written and nothing else."""
    if "\\" in text:
        return False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            j = i + 1
            while True:
                k = text.find(c, j)
                if k < 0:
                    return False
                if text.startswith(c, k + 1):
                    j = k + 2
                    continue
                break
            i = k + 1
            continue
        if c in "$`" or text.startswith(("--", "/*", "*/"), i):
            return False
        i += 1
    return True


_PLAIN_WORD = re.compile(r"[a-z_][a-z0-9_]*")


class _Plain(NamedTuple):
    """A statement the plain path captures by itself: its kind, the target as written (qualified
    parts, lower case), the name its rows are referred to by (alias, or the table's name), the
    functions and the tables it names (quoted, as `_plan` gives them)."""

    kind: str
    parts: tuple[str, ...]
    ref: str
    funcs: tuple[str, ...]
    tables: tuple[str, ...]

    @property
    def name(self) -> str:
        return ".".join(self.parts)

    def returning(self, keys: list[str] | None) -> str:
        """The capture appended to the statement: per row, the table it is in and the row as
        text (the new row; the removed row for DELETE), and for UPDATE the row it replaced, read
        by the primary key in the statement's own snapshot, with the transaction that replaced it
        and where it was (n rows replaced by this transaction, n different places: the rows the
        statement replaced, whatever the keys did).
        Every name is one `plain_start` checked needs no quotes; operators and types are
        pg_catalog's, whatever the search path."""
        r = self.ref
        out = f"\nRETURNING {r}.tableoid, ROW({r}.*)::pg_catalog.text"
        if self.kind == "update":
            assert keys
            match = " AND ".join(f"goex_o.{k} OPERATOR(pg_catalog.=) {r}.{k}" for k in keys)
            out += (", (SELECT ARRAY[ROW(goex_o.*)::pg_catalog.text, goex_o.xmax::pg_catalog.text, "
                    "goex_o.tableoid::pg_catalog.text, goex_o.ctid::pg_catalog.text] "
                    f"FROM ONLY {self.name} goex_o WHERE {match})")
        return out


@functools.lru_cache(maxsize=512)
def _plain(statement: str) -> _Plain | None:
    """The plain path's reading of `statement`, or None when it does not apply: one INSERT (no
    ON CONFLICT), UPDATE or DELETE of one named table, no WITH, no RETURNING of its own, and no
    comment, dollar quote or backslash (see `_lexically_plain`). The server checks the rest."""
    if not _lexically_plain(statement):
        return None
    rows, tables, funcs, kind, _, _ = _plan(statement)
    if not rows or kind not in ("insert", "update", "delete"):
        return None
    try:
        tree = sqlglot.parse_one(statement, read="postgres")
    except sqlglot.errors.SqlglotError:
        return None
    if (not isinstance(tree, (exp.Insert, exp.Update, exp.Delete)) or tree.find(exp.With) is not None
            or tree.args.get("returning") or tree.args.get("conflict")
            or len(list(tree.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge))) != 1):
        return None
    target = tree.this.this if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Schema) else tree.this
    if not isinstance(target, exp.Table) or target.args.get("catalog") is not None:
        return None
    parts = [p for p in (target.args.get("db"), target.this) if p is not None]
    alias = target.args.get("alias")
    names = [*parts, *([alias.this] if isinstance(alias, exp.TableAlias) and alias.this is not None else [])]
    if (not all(isinstance(p, exp.Identifier) and not p.quoted for p in names)
            or (alias is not None and len(names) == len(parts))):
        return None
    folded = [p.name.translate(_ASCII_LOWER) for p in names]  # as PostgreSQL folds an unquoted name
    if not all(_PLAIN_WORD.fullmatch(p) for p in folded):
        return None
    return _Plain(kind, tuple(folded[:len(parts)]), folded[-1], funcs, tables)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


# goex's own queries resolve names the same way on every connection, whatever an action set:
# pg_catalog first, temporary objects last (catalog text such as defaults is qualified by it)
_PATH = "public, pg_temp"
_PIN = f"SELECT pg_catalog.set_config('search_path', '{_PATH}', true)"
_TRIGGERS = ("SELECT coalesce(array_agg(oid ORDER BY oid), '{}') FROM pg_catalog.pg_trigger "
             "WHERE NOT tgisinternal AND tgname <> 'goex_capture'")


# The plain path's queries around the statement (`_plain_run`). The start resolves the names as
# the statement will resolve them (the session's search path, reset); `_ALONE` when the statement
# names no relation but its target (which `goex.plain_start` checks itself), without the query
# that resolves the others. The finish pins the search path first: the statement's settings must
# not steer goex's queries.
_PLAIN_START = (f"SELECT pg_catalog.pg_advisory_unlock_all(), session_user, goex.plain_start_{VERSION}("
                "pg_catalog.to_regclass(%s), %s, %s, %s, ARRAY(SELECT pg_catalog.to_regclass(n) "
                "FROM pg_catalog.unnest(%s::pg_catalog.text[]) AS n))")
_PLAIN_START_ALONE = (f"SELECT pg_catalog.pg_advisory_unlock_all(), session_user, goex.plain_start_{VERSION}("
                      "pg_catalog.to_regclass(%s), %s, %s, %s, NULL)")
_PLAIN_FINISH = f"{_PIN}, goex.plain_finish_{VERSION}()"
_PLAIN_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"

_NOT_PLAIN_FOR = 5.0  # seconds a name the plain path refused goes to the capture-trigger path directly


class _WritesInRead(Exception):
    """Statements run as a read wrote (or tried to): the server refused them in READ ONLY mode."""


class _Privilege(Exception):
    """The agent role lacks a privilege on a user object (one created outside goex since); its
    argument is the action's error (an ActionFailed)."""


def _plain_target(statements: list[str], counted: int) -> tuple[str | None, int]:
    """The table a single UPDATE/DELETE run without capture writes, and its net row change."""
    plan = _plan(statements[0])
    if len(statements) != 1 or plan[5] is None:
        return None, 0
    return plan[5], -counted if plan[3] == "delete" else 0


def _emptied(conn: psycopg.Connection, before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Tables (TRUNCATE, DELETE) that held at least 2 rows and hold none now."""
    oids = [int(rel) for rel, n in before.items() if n >= 2 and after.get(rel) == 0]
    if not oids:
        return []
    return [r[0] for r in conn.execute(
        "SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text ELSE n.nspname || '.' || c.relname END "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = ANY(%s)", (oids,)).fetchall()]


# -- the agent role --------------------------------------------------------------------------------

DEFAULT_ROLE = "goex_agent"
UNDO_ROLE = "goex_undo"  # for a role the user names: NAME_undo
_ROLE_PARAMS = ("goex_role", "goex_role_password")
# built-in roles whose members reach server files, programs or every table
_DANGEROUS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
                    "pg_read_all_data", "pg_write_all_data")
_DANGEROUS_FUNCS = ("pg_read_file(text)", "pg_read_binary_file(text)", "pg_ls_dir(text)", "pg_stat_file(text)",
                    "lo_import(text)", "lo_export(oid,text)", "pg_reload_conf()", "pg_terminate_backend(integer)")
_ATTRIBUTES = {"rolsuper": "SUPERUSER", "rolcreaterole": "CREATEROLE", "rolcreatedb": "CREATEDB",
               "rolbypassrls": "BYPASSRLS", "rolreplication": "REPLICATION"}


def split_url(url: str) -> tuple[str, str, str | None]:
    """(the URL goex connects with, the agent role, the agent role's password). `goex_role` and
    `goex_role_password` query parameters are goex's; the role logs in with the URL's password
    unless `goex_role_password` is given."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _ROLE_PARAMS}
    rest = urlencode([(k, v) for k, v in query if k not in _ROLE_PARAMS])
    role = ours.get("goex_role") or DEFAULT_ROLE
    password = ours.get("goex_role_password")
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    return urlunsplit(parts._replace(query=rest)), role, password


def _dangerous(conn: psycopg.Connection, role: str) -> list[str] | None:
    """What `role` holds that reaches beyond the database's user schemas (attributes, roles it
    can SET ROLE to or inherits, functions on server files); None when it does not exist."""
    row = conn.execute("SELECT oid, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication "
                       "FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if row is None:
        return None
    out = [word for word, held in zip(_ATTRIBUTES.values(), row[1:], strict=False) if held]
    for name, sup, *attrs in conn.execute(
            "WITH RECURSIVE m(id) AS (SELECT roleid FROM pg_auth_members WHERE member = %s "
            "UNION SELECT a.roleid FROM pg_auth_members a JOIN m ON a.member = m.id) "
            "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolbypassrls, r.rolreplication "
            "FROM m JOIN pg_roles r ON r.oid = m.id ORDER BY 1", (row[0],)).fetchall():
        if name in _DANGEROUS_ROLES or sup or any(attrs):
            out.append(f"member of {name}")
    for func in _DANGEROUS_FUNCS:
        held = _one(conn, "SELECT to_regprocedure(%s) IS NOT NULL AND has_function_privilege(%s, %s, 'EXECUTE')",
                    (func, role, func))
        if held:
            out.append(f"EXECUTE on {func}")
    return out


def _ensure_role(conn: psycopg.Connection, role: str, named: bool) -> None:
    """The agent role exists and is harmless: created (LOGIN, nothing else) when the URL's user
    may create roles, repaired when goex manages it, refused when a role the user named is not."""
    me = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
    superuser, creator = bool(me and me[0]), bool(me and me[1])
    ident = pgsql.Identifier(role)
    if _dangerous(conn, role) is None:
        if named or not (superuser or creator):
            raise ActionFailed(f"sql.execute on PostgreSQL: role {role!r} does not exist and goex may not create it; "
                               "create a LOGIN role with privileges on the user schemas only and name it with "
                               "?goex_role=NAME on the database URL")
        try:  # several processes may get here at once: the first one creates it
            conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                   "NOBYPASSRLS NOINHERIT").format(ident))
            verifier = (_one(conn, "SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
                        if superuser else None)
            if verifier and verifier.startswith("SCRAM-SHA-256$"):  # the URL's password logs the role in
                conn.execute(pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, pgsql.Literal(verifier)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass
    dangerous = _dangerous(conn, role) or []
    if dangerous and not named and superuser:
        _repair_role(conn, role)
        dangerous = _dangerous(conn, role) or []
    if dangerous:
        raise ActionFailed(f"sql.execute on PostgreSQL: the agent role {role!r} holds {', '.join(dangerous)}; "
                           "agent SQL must run without them: remove them, or name another role with ?goex_role=NAME")


def _ensure_undo_role(conn: psycopg.Connection, agent: str, undo: str) -> bool:
    """The role row undo, conflict checks and recovery log in as: a member of the agent role (its
    owner rights, inherited) that may also set `session_replication_role`, and nothing else, so
    an expression the agent wrote (a CHECK, a domain, an index expression) that undo evaluates
    runs with the agent's privileges. False when the URL's user is not a superuser: undo then
    runs as that user, which has no superuser right to lose."""
    if not _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return False
    ident = pgsql.Identifier(undo)
    for attempt in range(3):  # several processes may set it up at once: a lost race is retried
        try:
            if _dangerous(conn, undo) is None:
                conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                       "NOBYPASSRLS INHERIT").format(ident))
                verifier = _one(conn, "SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
                if verifier and verifier.startswith("SCRAM-SHA-256$"):  # the URL's password logs it in
                    conn.execute(pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, pgsql.Literal(verifier)))
            if _dangerous(conn, undo):
                _repair_role(conn, undo)
            if not _one(conn, "SELECT rolinherit FROM pg_roles WHERE rolname = %s", (undo,)):
                conn.execute(pgsql.SQL("ALTER ROLE {} INHERIT").format(ident))
            if not _one(conn, "SELECT pg_has_role(%s, %s, 'USAGE')", (undo, agent)):
                conn.execute(pgsql.SQL("GRANT {} TO {}").format(pgsql.Identifier(agent), ident))
            if not _one(conn, "SELECT has_parameter_privilege(%s, 'session_replication_role', 'SET')", (undo,)):
                conn.execute(pgsql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(ident))
            break
        except psycopg.Error:
            if attempt == 2:
                raise
    dangerous = _dangerous(conn, undo) or []
    if dangerous:
        raise ActionFailed(f"undo on PostgreSQL: the undo role {undo!r} holds {', '.join(dangerous)}; "
                           "remove them, goex evaluates the agent's expressions as that role")
    return True


def _repair_role(conn: psycopg.Connection, role: str) -> None:
    ident = pgsql.Identifier(role)
    conn.execute(pgsql.SQL("ALTER ROLE {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(ident))
    for (name,) in conn.execute("SELECT r.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
                                "WHERE a.member = (SELECT oid FROM pg_roles WHERE rolname = %s)", (role,)).fetchall():
        conn.execute(pgsql.SQL("REVOKE {} FROM {}").format(pgsql.Identifier(name), ident))
    for func in _DANGEROUS_FUNCS:
        if _one(conn, "SELECT to_regprocedure(%s) IS NOT NULL AND has_function_privilege(%s, %s, 'EXECUTE')",
                (func, role, func)):
            conn.execute(pgsql.SQL("REVOKE EXECUTE ON FUNCTION {} FROM {}").format(pgsql.SQL(func), ident))


def _adopt(conn: psycopg.Connection, role: str) -> None:
    """The agent role owns the user schemas' relations and types (ALTER and DROP need the owner)
    and may use and create in those schemas; a previous owner that is not a superuser keeps every
    privilege on what it owned. Runs inside a transaction holding goex's setup lock."""
    ident = pgsql.Identifier(role)
    rels = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), c.relkind, r.rolname, r.rolsuper FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner "
        f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_NS} AND r.rolname <> %s "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
        "AND d.deptype IN ('e', 'a', 'i') AND (d.deptype = 'e' OR c.relkind = 'S')) ORDER BY c.oid",
        (role,)).fetchall()
    words = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE", "f": "FOREIGN TABLE"}
    for name, kind, owner, owner_super in rels:
        conn.execute(pgsql.SQL("ALTER {} {} OWNER TO {}").format(pgsql.SQL(words[kind]), _ident(name), ident))
        if not owner_super:
            what = "SEQUENCE" if kind == "S" else "TABLE"
            conn.execute(pgsql.SQL("GRANT ALL ON {} {} TO {}").format(pgsql.SQL(what), _ident(name),
                                                                     pgsql.Identifier(owner)))
    for name, kind in conn.execute(
            "SELECT format('%%I.%%I', n.nspname, t.typname), t.typtype FROM pg_type t JOIN pg_namespace n "
            f"ON n.oid = t.typnamespace WHERE {_USER_NS} AND pg_get_userbyid(t.typowner) <> %s "
            "AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND "
            "(SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')) AND NOT EXISTS (SELECT 1 FROM pg_depend d "
            "WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')", (role,)).fetchall():
        word = "DOMAIN" if kind == "d" else "TYPE"
        conn.execute(pgsql.SQL("ALTER {} {} OWNER TO {}").format(pgsql.SQL(word), _ident(name), ident))
    for (nsp,) in conn.execute(f"SELECT n.nspname FROM pg_namespace n WHERE {_USER_NS} AND NOT "
                               "(has_schema_privilege(%s, n.oid, 'USAGE') AND "
                               "has_schema_privilege(%s, n.oid, 'CREATE'))", (role, role)).fetchall():
        conn.execute(pgsql.SQL("GRANT USAGE, CREATE ON SCHEMA {s} TO {r}; "
                               "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT ALL ON TABLES TO {r}; "
                               "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT ALL ON SEQUENCES TO {r}").format(
            s=pgsql.Identifier(nsp), r=ident))


# -- the engine ------------------------------------------------------------------------------------


class PostgresEngine(ServerEngine[psycopg.Connection]):
    kind = "postgresql"
    dialect = "postgres"
    REFUSED_FIRST = _REFUSED_FIRST
    REFUSED_PHRASES = _REFUSED_PHRASES
    REFUSED_CALLS = dict.fromkeys(_REFUSED_FUNCS, "{name}() is not allowed: it reaches server files, other sessions, "
                                  "other databases or session settings, outside the action's transaction and undo")
    GOEX_OBJECTS = "{name!r} names goex's own objects (schema goex holds its undo support); they are not for actions"
    GOEX_SCHEMA = "goex"
    AGENT_POOL = 4
    OWN_POOL = 2
    SETTLED = frozenset({"after", "before"})
    DRIVER_ERROR = psycopg.Error

    def __init__(self, url: str):
        super().__init__()
        self.url, self.role, password = split_url(url)
        self.name = unquote(urlsplit(self.url).path.lstrip("/")) or "postgres"
        self._agent_url = psycopg.conninfo.make_conninfo(
            self.url, user=self.role, **({"password": password} if password is not None else {}))
        self._named = self.role != DEFAULT_ROLE  # a role the user gave: goex checks it, never changes it
        self.undo_role = f"{self.role}_undo" if self._named else UNDO_ROLE
        self._undo_url: str | None = None  # set up with the roles: None when undo runs as the URL's user
        self._ready = False
        # per connection in a range undo's transaction: table shapes and foreign keys read once
        # (steady: the transaction's row changes lock the tables against ALTER until it ends)
        self._steady: dict[int, dict[str, Any]] = {}
        self._keys: dict[str, list[str]] = {}  # the plain path: a table's primary key, by the name as written
        self._not_plain: dict[str, float] = {}  # names the plain path refused lately, until when
        self._shapes: dict[tuple[int, str], dict[str, Any]] = {}  # the plain path: columns and shape by table, version
        self._ours: dict[tuple[Any, ...], _Sent] = {}  # the plain path: goex's queries converted, by text and arguments
        self._passed: set[str] = set()  # statement texts `check` let through

    # -- connections -----------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        """A connection as the URL's user: goex's setup, capture reads, undo, recovery."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise ActionFailed(f"sql.execute: cannot connect to PostgreSQL database {self.name!r}: "
                               f"{str(exc).strip()}") from None
        conn.execute(f"SET search_path = {_PATH}")
        if not self._ready:
            self._setup(conn)
        return conn

    def _agent_connect(self) -> psycopg.Connection:
        """A connection logged in as the agent role: the session user itself holds no dangerous
        privilege, so no SET ROLE / set_config('role') inside an action can regain one."""
        return self._login(self._agent_url, f"sql.execute: cannot log in to {self.name!r} as the agent role "
                           f"{self.role!r}", "allow it in pg_hba.conf, or name a role goex may use with "
                           "?goex_role=NAME&goex_role_password=PASSWORD on the database URL")

    _agent = _agent_connect

    def _own_connect(self, fresh: bool) -> psycopg.Connection:
        """The dump mode's work needs the URL's user (`fresh`); the rest runs as the undo role."""
        return self._connect() if fresh else self._undo()

    def _reset(self, conn: psycopg.Connection) -> None:
        """An agent session is reset when its action's transaction begins (see `_begin`)."""
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise Dirty("the connection is closed or inside a transaction")

    def _reset_own(self, conn: psycopg.Connection) -> None:
        """Code of the agent's that undo evaluated here (an index expression, a domain check) may
        have set something: reset."""
        self._reset(conn)
        conn.execute(f"RESET ALL; SELECT pg_catalog.pg_advisory_unlock_all(); SET search_path = {_PATH}")

    def _is_open(self, conn: psycopg.Connection) -> bool:
        return not conn.closed

    def _rollback(self, conn: psycopg.Connection) -> None:
        _rollback(conn)

    def _close(self, conn: psycopg.Connection) -> None:
        conn.close()

    def _undo(self) -> psycopg.Connection:
        """A connection for row undo, conflict checks and recovery: logged in as the undo role, so
        nothing the agent wrote that they evaluate can regain a superuser's rights."""
        if self._undo_url is None:
            return self._connect()
        conn = self._login(self._undo_url, f"undo: cannot log in to {self.name!r} as the undo role "
                           f"{self.undo_role!r}", "allow it in pg_hba.conf like the agent role")
        conn.execute(f"SET search_path = {_PATH}")
        return conn

    def _login(self, url: str, failure: str, hint: str) -> psycopg.Connection:
        """A connection as one of goex's roles (set up first, by the URL's user, if not yet)."""
        if not self._ready:
            self._connect().close()
        try:
            return psycopg.connect(url, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise ActionFailed(f"{failure}: {str(exc).strip()}; {hint}") from None

    def _setup(self, conn: psycopg.Connection) -> None:
        _ensure_role(conn, self.role, self._named)
        if _ensure_undo_role(conn, self.role, self.undo_role):
            self._undo_url = psycopg.conninfo.make_conninfo(self.url, user=self.undo_role)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7306007145)")
            row = conn.execute(f"SELECT to_regprocedure('goex.outside_{VERSION}()') IS NOT NULL"
                               ).fetchone()
            if not (row and row[0]):
                conn.execute(_SETUP.encode())
            conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA goex TO {r}; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA goex "
                                   "TO {r}").format(r=pgsql.Identifier(self.role)))
            if not self._named:
                _adopt(conn, self.role)
        self._ready = True

    def adopt(self) -> None:
        """Give the agent role the user schemas' objects created outside goex since (DDL needs
        ownership); the role goex manages only."""
        if self._named:
            return
        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(7306007145)")
                _adopt(conn, self.role)
        finally:
            conn.close()

    def agent_privileges(self) -> dict[str, Any]:
        """The role agent SQL runs as, and the dangerous attributes, memberships and functions it
        holds (none when safe)."""
        try:  # no setup: a report, also for a role goex refuses to use
            conn = psycopg.connect(self.url, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            return {"runs_as": self.role, "safe": False, "dangerous": ["unknown"],
                    "detail": f"cannot connect to {self.name}: {str(exc).strip()}"}
        try:
            dangerous = _dangerous(conn, self.role)
            undo = _dangerous(conn, self.undo_role)
        finally:
            conn.close()
        if dangerous is None:
            return {"runs_as": self.role, "safe": False, "dangerous": ["missing"],
                    "detail": f"role {self.role!r} does not exist on {self.name}"}
        detail = (f"agent SQL on {self.name} logs in as role {self.role!r}: no superuser, role or database creation, "
                  "RLS bypass, replication, server file or program access")
        if dangerous:
            detail = f"agent SQL on {self.name} runs as role {self.role!r}, which holds: {', '.join(dangerous)}"
        if undo is not None:
            detail += (f"; undo evaluates agent expressions as {self.undo_role!r}"
                       + (f", which holds: {', '.join(undo)}" if undo else " (a member of the agent role only)"))
        return {"runs_as": self.role, "safe": not dangerous and not undo,
                "dangerous": dangerous + [f"undo role: {d}" for d in undo or []],
                "detail": detail, "undo_runs_as": self.undo_role if undo is not None else None}

    # -- analysis --------------------------------------------------------------------------------

    def check(self, statement: str, analysis: dict[str, Any]) -> None:
        """The checks run once per statement text: here they read nothing but the text (its words
        and tokens against fixed tables; `analysis` is the text's own), so a text that passed
        passes again."""
        if statement in self._passed:
            return
        super().check(statement, analysis)
        if len(self._passed) > 4096:
            self._passed.clear()
        self._passed.add(statement)

    def _check_words(self, statement: str, said: list[str], analysis: dict[str, Any]) -> None:
        if "concurrently" in said:
            raise SqlRefused("CONCURRENTLY is not allowed: it cannot run inside the action's transaction; "
                             "leave out CONCURRENTLY")

    def _refused_call(self, name: str) -> str | None:
        return self.REFUSED_CALLS["pg_read_file"] if name.startswith("dblink") else self.REFUSED_CALLS.get(name)

    # -- dry run ---------------------------------------------------------------------------------

    def _rows_mode(self, statements: list[str]) -> bool:
        return all(_plan(s)[0] for s in statements)

    def _begin(self, conn: psycopg.Connection, statements: list[str], everything: bool,
               install: bool, read_only: bool = False) -> dict[str, Any]:
        """Reset what an earlier action may have left in the session, open the transaction and
        start capture; raises Dirty when the session is not as goex left it. `read_only`: the
        statements then run in a READ ONLY transaction (goex's own set-up done first)."""
        tables = sorted({t for s in statements for t in _plan(s)[1]})
        funcs = sorted({f for s in statements for f in _plan(s)[2]})
        # explicit modes: the transaction must not take the defaults an earlier action set
        query = pgsql.SQL("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; RESET ALL; "
                          "SELECT pg_advisory_unlock_all(), session_user; SELECT goex.start_{}({}::text[], "
                          "{}::text[], {}, {}, current_setting('search_path')){}").format(
            pgsql.SQL(VERSION), pgsql.Literal(tables), pgsql.Literal(funcs), pgsql.Literal(everything),
            pgsql.Literal(install), pgsql.SQL("; SET TRANSACTION READ ONLY" if read_only else ""))
        try:
            cur = conn.execute(query)
        except psycopg.Error as exc:
            if (exc.diag.message_primary or "").startswith("goex session:"):
                raise Dirty(_message(exc)) from None
            raise
        cur.nextset()
        cur.nextset()
        who = cur.fetchone()
        if who is None or who[1] != self.role:
            raise Dirty(f"the session user is {who[1] if who else None!r}, not the agent role {self.role!r}")
        cur.nextset()
        row = cur.fetchone()
        assert row is not None
        return row[0]

    def _start(self, conn: psycopg.Connection, statements: list[str], everything: bool,
               install: bool = True, read_only: bool = False) -> tuple[psycopg.Connection, dict[str, Any]]:
        """`_begin` on `conn`, or, when its session is not clean, on a fresh connection (the dirty
        one is closed, never reused)."""
        try:
            return conn, self._begin(conn, statements, everything, install, read_only)
        except Dirty:
            conn.close()
        conn = self._agent_connect()
        try:
            return conn, self._begin(conn, statements, everything, install, read_only)
        except Dirty as exc:
            conn.close()
            raise ActionFailed(f"sql.execute on {self.name}: a new session is not clean ({exc}); nothing was "
                               "applied") from None

    def dry_run(self, statements: list[str], params: Any) -> dict[str, Any]:
        """What the statements would do, from a run as the agent role in a transaction that is
        rolled back: `rows` they change (foreign-key actions, triggers, and the rows of tables
        dropped or truncated included), `all_rows` (tables of at least 2 rows every row of which
        they change or remove) and `creates_trigger` (a trigger exists after them that did not)."""
        return self._adopting(lambda: self._effect(statements, params))

    def _adopting(self, run: Callable[[], R]) -> R:
        """`run()`; if the agent role lacks a privilege, once more after it took over the objects
        created outside goex since; the action's error if it still lacks one."""
        try:
            return run()
        except _Privilege:
            self.adopt()
            try:
                return run()
            except _Privilege as exc:
                raise exc.args[0] from None

    def _effect(self, statements: list[str], params: Any) -> dict[str, Any]:
        rows_mode = self._rows_mode(statements)
        conn = self._take() if rows_mode else self._agent_connect()
        seqs_before: dict[str, Any] = {}
        seqs_after: dict[str, Any] | None = None
        try:
            simple = rows_mode and len(statements) == 1 and _plan(statements[0])[4]
            try:
                conn, started = self._start(conn, statements, not rows_mode, install=not simple)
            except psycopg.Error as exc:
                raise self._failed(exc, "nothing was applied") from None
            seqs_before = started["seqs"]
            triggers_before = [] if rows_mode else _one(conn, _TRIGGERS)
            counts_before = {} if rows_mode else _one(conn, f"SELECT goex.counts_{VERSION}()")
            counted = 0
            for n, statement in enumerate(statements):
                text, values = convert_params(statement, params)
                try:
                    cur = conn.execute(text, values)
                except psycopg.Error as exc:
                    if exc.sqlstate == "42501":
                        raise _Privilege(ActionFailed(f"sql.execute on {self.name}: {_message(exc)}; nothing "
                                                      "was applied")) from None
                    raise self._failed(exc, "nothing was applied", n, len(statements)) from None
                counted += max(cur.rowcount, 0)
            try:
                plain = started.get("plain")
                target, net = _plain_target(statements, counted) if plain else (None, 0)
                # pinned first, in the same round trip: what the statements set must not steer goex's queries
                log, seqs_after, all_rows = _after_pin(conn, pgsql.SQL(
                    "SELECT goex.logged_{v}(), goex.sequences_{v}(), goex.all_rows_{v}(to_regclass({})::oid, {}, {})"
                ).format(pgsql.Literal(target), pgsql.Literal(net), pgsql.Literal(counted), v=pgsql.SQL(VERSION)),
                    "ROLLBACK" if rows_mode else "")  # nothing else to read: the dry run ends in the same trip
                changed = counted if plain else log["count"]
                creates_trigger = False
                if not rows_mode:
                    counts_after = _one(conn, f"SELECT goex.counts_{VERSION}()")
                    creates_trigger = bool(set(_one(conn, _TRIGGERS)) - set(triggers_before))
                    net_by_rel = {rel: int(n) for rel, n in log["net"].items()}
                    for rel in set(counts_before) | set(counts_after):
                        if rel not in counts_after:
                            changed += counts_before[rel]
                        elif rel not in counts_before:
                            changed += counts_after[rel]
                        else:
                            changed += abs(counts_after[rel] - counts_before[rel] - net_by_rel.get(rel, 0))
                    all_rows = all_rows + _emptied(conn, counts_before, counts_after)
            except psycopg.Error as exc:
                raise self._failed(exc, "nothing was applied") from None
            return {"rows": int(changed), "all_rows": sorted(set(all_rows)), "creates_trigger": creates_trigger}
        finally:
            _rollback(conn)
            _reset_sequences(conn, seqs_before, seqs_after)
            self._give(conn, rows_mode)

    def rehearse(self, statements: list[str], params: Any) -> tuple[dict[str, Any], Staged | None]:
        """Row changes run once: capture started, the statements run, the effect read off the
        capture log and capture finished, all in the transaction that stays open as the action's
        run (2 round trips before the commit), or, for a single statement on a plain table, the
        plain path (`_rehearse_plain`, 1 round trip before the commit). Schema changes: a dry run."""
        if not self._rows_mode(statements):
            return self.dry_run(statements, params), None
        return self._adopting(lambda: self._rehearse_plain(statements, params) or self._rehearse(statements, params))

    def _rehearse_plain(self, statements: list[str], params: Any) -> tuple[dict[str, Any], Staged] | None:
        """One INSERT, UPDATE or DELETE of a plain table, captured by the statement itself: the
        transaction opened, the table checked (`goex.plain_start`), the statement run with the
        capture appended (`_Plain.returning`) and the figures read, in one round trip; no trigger
        is created, so no DDL. What the statement returned is believed only when the server's own
        counts agree: every row is in the checked table, the transaction inserted, updated or
        deleted exactly that many rows of it and nothing else of it, and each replaced row was
        replaced by this transaction. None (nothing applied, sequences set back) when the path
        does not apply or anything fails: the capture-trigger path then runs the statement."""
        plain = _plain(statements[0]) if len(statements) == 1 and psycopg.Pipeline.is_supported() else None
        if plain is None or self._not_plain.get(plain.name, 0.0) > time.monotonic():
            return None
        conn = self._take()
        seqs: dict[str, Any] = {}  # before the statement, then "after" too once read
        after: dict[str, Any] = {}

        def fail() -> None:
            _rollback(conn)
            _reset_sequences(conn, seqs, after.get("seqs"))
            self._give(conn)

        try:
            result = self._plain_run(conn, plain, statements[0], params, seqs, after)
        except Dirty:
            _rollback(conn)
            _reset_sequences(conn, seqs, after.get("seqs"))
            conn.close()
            return None
        except BaseException:
            fail()
            raise
        if result is None:
            fail()
            return None
        effect, done, output = result

        return effect, Staged(output, lambda put_blob: _rows_capture(done, seqs, put_blob),
                              lambda: self._commit(conn, fail, True), fail)

    def _plain_run(self, conn: psycopg.Connection, plain: _Plain, statement: str, params: Any, seqs: dict[str, Any],
                   after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        """`_rehearse_plain`'s run on `conn`: (effect, what `goex.finish` would return, output),
        or None when the plain path does not apply; `seqs` is filled with the sequences before,
        `after` with what `goex.plain_finish` returned. Raises Dirty when the session is not as
        goex left it."""
        keys = self._keys.get(plain.name) if plain.kind == "update" else None
        if plain.kind == "update" and keys is None:
            try:
                keys = _one(conn, pgsql.SQL("SELECT goex.plain_key_{}(%s, current_setting('search_path'))").format(
                    pgsql.SQL(VERSION)), (plain.name,))
            except psycopg.Error:
                return None
            if not keys:
                self._not_plain[plain.name] = time.monotonic() + _NOT_PLAIN_FOR
                return None
            self._keys[plain.name] = keys
        text, values = convert_params(statement, params)
        text = text.rstrip().rstrip(";").rstrip() + plain.returning(keys)
        try:
            encoding = conn.info.encoding
            results = _at_once(conn, [self._our(conn, encoding, _PLAIN_BEGIN), self._our(conn, encoding, "RESET ALL"),
                                      self._plain_start(conn, encoding, plain, keys), _sent(conn, text, values),
                                      self._our(conn, encoding, _PLAIN_FINISH)])
        except psycopg.Error:  # the connection failed, or the parameters could not be converted
            return None
        tx = Transformer(conn)
        first, returning, last = results[2], results[3], results[4]
        failed = next((r for r in results if r.status != pq.ExecStatus.COMMAND_OK
                       and r.status != pq.ExecStatus.TUPLES_OK), None)
        if failed is not None:
            if failed.status == pq.ExecStatus.FATAL_ERROR:
                exc = psycopg.errors.error_from_result(failed, encoding=conn.info.encoding)
                if (exc.diag.message_primary or "").startswith("goex session:"):
                    raise Dirty(_message(exc)) from None
                if exc.sqlstate == "GXNP1":
                    self._keys.pop(plain.name, None)
                    self._not_plain[plain.name] = time.monotonic() + _NOT_PLAIN_FOR
            self._started(tx, first, seqs)
            return None
        who, started = self._started(tx, first, seqs)
        if who != self.role:
            raise Dirty(f"the session user is {who!r}, not the agent role {self.role!r}")
        tx.set_pgresult(last)
        done = tx.load_row(0, tuple)[1] if last.ntuples else None
        if done is None or started is None:
            return None
        after.update(done)
        tx.set_pgresult(returning)
        returned = tx.load_rows(0, returning.ntuples, tuple)
        rel, n = started["rel"], len(returned)
        xid = int(done["xid"]) & 0xFFFFFFFF
        diff = [b - a for a, b in zip(started["counts"][1:], done["counts"][1:], strict=True)]
        expected = {"insert": [n, 0, 0], "update": [0, n, 0], "delete": [0, 0, n]}[plain.kind]
        replaced = {row[2][3] for row in returned if plain.kind == "update" and row[2] is not None}
        if plain.kind == "update" and len(replaced) != n:  # each new row replaced a row of its own
            return None
        if done["counts"][0] != rel or diff != expected or any(
                row[0] != rel or (plain.kind == "update" and (row[2] is None or int(row[2][2]) != rel
                                                              or int(row[2][1]) != xid)) for row in returned):
            return None  # the server's counts disagree with what the statement returned
        net: dict[str, int] = {}
        for row in returned:
            net[row[1]] = net.get(row[1], 0) + (-1 if plain.kind == "delete" else 1)
            if plain.kind == "update":
                net[row[2][0]] = net.get(row[2][0], 0) - 1
        rows = [[text, count] for text, count in sorted(net.items()) if count]
        shape = self._shapes.get((rel, started["version"]))
        if shape is None and rows:  # the table is locked: its columns cannot change before the commit
            if len(self._shapes) > 1000:
                self._shapes.clear()
            try:
                shape = self._shapes[(rel, started["version"])] = _one(conn, pgsql.SQL(
                    "SELECT goex.plain_shape_{}({})").format(pgsql.SQL(VERSION), pgsql.Literal(rel)))
            except psycopg.Error:
                return None
        tables = [{"table": started["table"], "key": started["key"], "columns": shape["columns"],
                   "shape": shape["shape"], "rows": rows, "counts": None}] if rows and shape else []
        all_rows: list[str] = []
        if n >= 2 and plain.kind != "insert":
            try:
                all_rows = _after_pin(conn, pgsql.SQL("SELECT goex.emptied_{}({}, {})").format(
                    pgsql.SQL(VERSION), pgsql.Literal(rel), pgsql.Literal(-n if plain.kind == "delete" else 0)))[0]
            except psycopg.Error:
                return None
        effect = {"rows": n, "all_rows": sorted(set(all_rows)), "creates_trigger": False}
        return effect, {"xid": done["xid"], "tables": tables, "seqs": done["seqs"]}, {"rows_changed": n}

    def _plain_start(self, conn: psycopg.Connection, encoding: str, plain: _Plain, keys: list[str] | None) -> _Sent:
        """`goex.plain_start`'s query for `plain`, converted."""
        args = (plain.name, [*plain.parts, plain.ref], keys, list(plain.funcs))
        if plain.tables == (".".join(f'"{p}"' for p in plain.parts),):  # (see `_plan`: names quoted)
            return self._our(conn, encoding, _PLAIN_START_ALONE, args, (plain, keys and tuple(keys)))
        return self._our(conn, encoding, _PLAIN_START, (*args, list(plain.tables)), (plain, keys and tuple(keys)))

    def _our(self, conn: psycopg.Connection, encoding: str, text: str, args: Any = None, key: Any = None) -> _Sent:
        """One of goex's own queries and its arguments (None, or what `key` stands for), converted
        (`_sent`) once per client encoding and kept."""
        sent = self._ours.get((text, key, encoding))
        if sent is None:
            if len(self._ours) > 1000:
                self._ours.clear()
            sent = self._ours[(text, key, encoding)] = _sent(conn, text, args)
        return sent

    @staticmethod
    def _started(tx: Any, first: Any, seqs: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """The session user and what `goex.plain_start` returned (`first`, its result), when it
        ran (its sequences into `seqs`)."""
        if first.status != pq.ExecStatus.TUPLES_OK or not first.ntuples:
            return None, None
        tx.set_pgresult(first)
        row = tx.load_row(0, tuple)
        seqs.update(row[2]["seqs"])
        return row[1], row[2]

    def _rehearse(self, statements: list[str], params: Any) -> tuple[dict[str, Any], Staged]:
        conn = self._take()
        state: dict[str, Any] = {"seqs": {}, "seqs_after": None}

        def fail() -> None:
            _rollback(conn)
            _reset_sequences(conn, state["seqs"], state["seqs_after"])
            self._give(conn)

        try:
            try:
                conn, started = self._start(conn, statements, False)
            except psycopg.Error as exc:
                raise self._failed(exc, "nothing was applied") from None
            state["seqs"] = started["seqs"]
            figures = pgsql.SQL("SELECT goex.logged_{v}(), goex.all_rows_{v}(NULL, 0, 0)").format(v=pgsql.SQL(VERSION))
            finish = pgsql.SQL("SELECT goex.finish_{}({}::oid[])").format(pgsql.SQL(VERSION),
                                                                         pgsql.Literal(started["rels"]))
            if len(statements) == 1 and psycopg.Pipeline.is_supported():
                output, (log, all_rows), (done,) = self._pipelined(conn, statements[0], params, figures, finish)
            else:
                output, _ = self._execute(conn, statements, params, reads=False)
                try:  # pinned first: what the statements set must not steer goex's queries
                    log, all_rows = _after_pin(conn, figures)
                    done = _one(conn, finish)
                except psycopg.Error as exc:
                    raise self._failed(exc, "nothing was applied") from None
            state["seqs_after"] = done["seqs"]
        except BaseException:
            fail()
            raise
        effect = {"rows": int(log["count"]), "all_rows": sorted(set(all_rows)), "creates_trigger": False}
        return effect, Staged(output, lambda put_blob: _rows_capture(done, state["seqs"], put_blob),
                              lambda: self._commit(conn, fail, True), fail)

    # -- doing -----------------------------------------------------------------------------------

    def before(self, statements: list[str], analyses: list[dict[str, Any]], put_blob: PutBlob) -> dict[str, Any]:
        if self._rows_mode(statements):
            return {"mode": "rows"}
        self.adopt()  # DDL needs the owner: objects created outside goex since are taken over first
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            snapshot = _one(conn, "SELECT pg_export_snapshot()")
            script, rows = _pg_dumps(self.url, snapshot)
            fingerprint = _fingerprint(_objects(conn))
        finally:
            _rollback(conn)
            conn.close()
        chunks = [put_blob(script[i:i + CHUNK]) for i in range(0, len(script), CHUNK)]
        rows_chunks = [put_blob(rows[i:i + CHUNK]) for i in range(0, len(rows), CHUNK)]
        return {"mode": "dump", "chunks": chunks, "size": len(script), "sha": hashlib.sha256(script).hexdigest(),
                "rows": {"chunks": rows_chunks, "size": len(rows), "sha": hashlib.sha256(rows).hexdigest()},
                "fingerprint": _digest(fingerprint)}

    def read(self, statements: list[str], params: Any, analyses: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The output of statements that only read, run in a READ ONLY transaction that is rolled
        back; None when the server says they write after all (a volatile function such as nextval
        or setval, a function that changes rows, a locking read): they must then run as a write."""
        try:
            staged = self.stage(statements, params, analyses, {}, read_only=True)
        except _WritesInRead:
            return None
        staged.abort()
        return staged.output

    def stage(self, statements: list[str], params: Any, analyses: list[dict[str, Any]],
              before: dict[str, Any], read_only: bool = False) -> Staged:
        mode = before.get("mode") or ("rows" if self._rows_mode(statements) else "dump")
        # without a `before` (goex's capture for a write) the statements only read: read-only
        reads = read_only or not before
        rows_mode = mode == "rows"
        conn = self._take() if rows_mode else self._agent_connect()
        state: dict[str, Any] = {"seqs": {}, "seqs_after": None, "rels": []}

        def fail() -> None:
            _rollback(conn)
            _reset_sequences(conn, state["seqs"], state["seqs_after"])
            self._give(conn, rows_mode)

        try:
            try:
                capturing = rows_mode and not reads
                conn, started = self._start(conn, statements if capturing else [], False, install=capturing,
                                            read_only=reads)
                state["rels"] = started["rels"]
                state["seqs"] = started["seqs"]
                if mode == "dump" and "fingerprint" in before:  # a write: its dump must still be current
                    conn.execute(_PIN)
                    now = _digest(_fingerprint(_objects(conn)))
                    if now != before.get("fingerprint"):
                        raise ActionFailed(f"sql.execute on {self.name}: the database changed between the snapshot "
                                           "goex took for undo and the start of the action; nothing was applied; "
                                           "run the action again")
            except psycopg.Error as exc:
                raise self._failed(exc) from None
            try:
                output = self._execute(conn, statements, params, reads)[0]
            except _Privilege as exc:
                raise exc.args[0] from None
        except BaseException:
            fail()
            raise

        def capture(put_blob: PutBlob) -> dict[str, Any]:
            try:
                if rows_mode:  # pinned first, in the same round trip: the statements' settings must not steer it
                    done = _after_pin(conn, pgsql.SQL("SELECT goex.finish_{}({}::oid[])").format(
                        pgsql.SQL(VERSION), pgsql.Literal(state["rels"])))[0]
                    state["seqs_after"] = done["seqs"]
                    return _rows_capture(done, state["seqs"], put_blob)
                conn.execute(_PIN)  # what the statements set must not steer goex's own queries
                conn.execute(f"SELECT goex.outside_{VERSION}()")
                xid = _one(conn, "SELECT pg_current_xact_id()::text")
                objects = _fingerprint(_objects(conn))
                state["seqs_after"] = _one(conn, f"SELECT goex.sequences_{VERSION}()")
                return {"mode": "dump", "xid": xid, "after": {"xid": xid, "objects": objects}}
            except psycopg.Error as exc:
                fail()
                raise self._failed(exc) from None

        return Staged(output, capture, lambda: self._commit(conn, fail, rows_mode), fail)

    def _pipelined(self, conn: psycopg.Connection, statement: str, params: Any,
                   *then: pgsql.Composed) -> tuple[Any, ...]:
        """One statement, the search path pinned, then goex's queries `then`, in one round trip
        (the server skips what follows an error): the statement's output, then each query's row."""
        text, values = convert_params(statement, params)
        try:
            with conn.pipeline():
                cur = conn.execute(text, values)
                conn.execute(_PIN)
                ours = [conn.execute(query) for query in then]
        except psycopg.Error as exc:
            failed = self._failed(exc, "nothing of it was applied")
            if exc.sqlstate == "42501":
                raise _Privilege(failed) from None
            raise failed from None
        if cur.description is not None:
            output = format_rows([d.name for d in cur.description], cur)
        else:
            output = {"rows_changed": max(cur.rowcount, 0)}
        return (output, *(tuple(c.fetchone() or ()) for c in ours))

    def _commit(self, conn: psycopg.Connection, fail: Callable[[], None], keep: bool) -> None:
        try:
            _command(conn, b"COMMIT")
        except psycopg.Error as exc:
            fail()
            raise self._failed(exc, "the commit failed; nothing of it was applied") from None
        self._give(conn, keep)

    def _execute(self, conn: psycopg.Connection, statements: list[str], params: Any,
                 reads: bool) -> tuple[dict[str, Any], int]:
        """Run the statements in `conn`'s open transaction: the output (the last query's rows, or
        the rows changed) and the rows the server counted. `reads`: a statement that writes
        raises _WritesInRead; else a missing privilege raises _Privilege."""
        output: dict[str, Any] = {}
        changed = 0
        for n, statement in enumerate(statements):
            text, values = convert_params(statement, params)
            try:
                cur = conn.execute(text, values)
            except psycopg.Error as exc:
                if reads and exc.sqlstate == "25006":  # read_only_sql_transaction: it writes
                    raise _WritesInRead() from None
                failed = self._failed(exc, "nothing of it was applied", n, len(statements))
                if exc.sqlstate == "42501":
                    raise _Privilege(failed) from None
                raise failed from None
            if cur.description is not None:
                output = format_rows([d.name for d in cur.description], cur)
            elif cur.rowcount and cur.rowcount > 0:
                changed += cur.rowcount
        return output or {"rows_changed": changed}, changed

    # -- undoing ---------------------------------------------------------------------------------

    def conflicts(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> list[tuple[str, str]]:
        # rows are read back through their types (domain checks): as the undo role; the catalog
        # and row text of the dump mode evaluate nothing the agent wrote
        dump_mode = captured.get("mode") == "dump"
        with self._own(fresh=dump_mode) as conn:
            conn.execute("BEGIN")
            if dump_mode:
                return _object_differences(captured["after"]["objects"], _fingerprint(_objects(conn)), self.name)
            found, plans = self._row_conflicts(conn, _tables(captured, get_blob))
            plans = [(t, state) for t, state in plans if state != "before"]
            if not found and _links(conn, [t for t, _ in plans]):
                # a trial undo, rolled back: would it orphan or cascade into other rows?
                conn.execute("SET LOCAL session_replication_role = replica")
                self._undo_rows(conn, plans, False, None)
                found += [(f"{self.name}.{t}", Unforceable(w)) for t, w in self._dangling(conn, plans)]
            for name, (_, after) in (captured.get("sequences") or {}).items():
                now = _sequence(conn, name)
                if now is not None and now != after:
                    found.append((f"{self.name}.{name}", f"sequence moved since the action: {after} -> {now}"))
            return found

    def revert(self, before: dict[str, Any], captured: dict[str, Any] | None, get_blob: GetBlob,
               force: bool) -> None:
        if captured is None:  # never committed: PostgreSQL rolled it back
            return
        dump_mode = captured.get("mode") == "dump" or before.get("mode") == "dump"
        # the dump's objects need the URL's user; whatever evaluates agent SQL runs as the agent or undo role
        with self._own(fresh=dump_mode) as conn:
            try:
                conn.execute("BEGIN; SET LOCAL session_replication_role = replica")
                if dump_mode:
                    self._restore_dump(conn, before, captured, get_blob, force)
                    return
                sequences = captured.get("sequences") or {}
                problems = []
                for name, (then, after) in sequences.items():
                    now = _sequence(conn, name)
                    if now is not None and now not in (after, then) and not force:
                        problems.append(f"{name}: sequence moved since the action: {after} -> {now}")
                self._revert_rows(conn, _tables(captured, get_blob), force, problems)
                _set_sequences(conn, {name: then for name, (then, _) in sequences.items()})
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise ActionFailed(f"undo on {self.name} failed, nothing of it was applied: "
                                   f"{_message(exc)}") from None

    # -- a range of row-mode entries of this database, undone as one transaction -------------------

    @staticmethod
    def coalescable(before: dict[str, Any], captured: dict[str, Any]) -> bool:
        """Row changes (not the schema dumps of DDL)."""
        return before.get("mode") != "dump" and captured.get("mode") != "dump" and "xid" in captured

    def range_conflicts(self, captureds: list[dict[str, Any]], get_blob: GetBlob) -> list[list[tuple[str, str]]]:
        """For row-mode entries, newest first: what each would meet if it were undone right after
        the newer ones. Each is checked as `conflicts` checks it, then undone in the same
        transaction, so the next is checked against what its own undo would find; the transaction
        is rolled back (sequences, which a rollback does not restore, are followed in memory)."""
        found: list[list[tuple[str, str]]] = [[] for _ in captureds]
        moved: dict[str, Any] = {}  # sequences as the newer entries' undo would leave them
        with self._own() as conn, self._steady_in(conn):
            try:
                conn.execute("BEGIN; SET LOCAL session_replication_role = replica")
                for i, captured in enumerate(captureds):
                    tables = _tables(captured, get_blob)
                    problems, plans = self._row_conflicts(conn, tables)
                    plans = [(t, state) for t, state in plans if state != "before"]
                    for name, (then, after) in (captured.get("sequences") or {}).items():
                        now = moved[name] if name in moved else _sequence(conn, name)
                        if now is not None and now != after:
                            problems.append((f"{self.name}.{name}",
                                             f"sequence moved since the action: {after} -> {now}"))
                        moved[name] = then if now is not None else None
                    if not problems and plans:
                        self._undo_rows(conn, plans, False, None)
                        problems = [(f"{self.name}.{t}", Unforceable(w)) for t, w in self._dangling(conn, plans)]
                    if problems:
                        found[i] = problems
                        break
            except psycopg.Error as exc:
                raise ActionFailed(f"undo on {self.name} failed, nothing of it was applied: {_message(exc)}") from None
            finally:
                _rollback(conn)
        return found

    def revert_range(self, captureds: list[dict[str, Any]], get_blob: GetBlob) -> None:
        """Undo row-mode entries, newest first, in one transaction: each one's rows checked
        (locked) and set back as `revert` does, the sequences set to what the oldest entry found,
        one commit. A row changed since stops it (UndoRefused) with nothing applied."""
        oldest: dict[str, Any] = {}
        with self._own() as conn, self._steady_in(conn):
            try:
                conn.execute("BEGIN; SET LOCAL session_replication_role = replica")
                for captured in captureds:
                    self._revert_rows(conn, _tables(captured, get_blob), False, [])
                    oldest.update((name, then) for name, (then, _) in (captured.get("sequences") or {}).items())
                _set_sequences(conn, oldest)
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise ActionFailed(f"undo on {self.name} failed, nothing of it was applied: "
                                   f"{_message(exc)}") from None

    @contextlib.contextmanager
    def _steady_in(self, conn: psycopg.Connection) -> Iterator[None]:
        self._steady[id(conn)] = {"shapes": {}, "links": {}}
        try:
            yield
        finally:
            del self._steady[id(conn)]

    def _restore_dump(self, conn: psycopg.Connection, before: dict[str, Any], captured: dict[str, Any],
                      get_blob: GetBlob, force: bool) -> None:
        """The user schemas put back from the dump taken before the action."""
        now = _fingerprint(_objects(conn))
        if _digest(now) == before.get("fingerprint"):
            return  # already undone
        differences = _object_differences(captured["after"]["objects"], now, self.name)
        if differences and not force:
            raise UndoRefused(f"undo on {self.name} stopped, the database changed since the action: "
                              + "; ".join(f"{t}: {w}" for t, w in differences[:20]))
        script = _stored(before, get_blob, self.name)
        rows = _stored(before["rows"], get_blob, self.name) if "rows" in before else None
        _drop_user_objects(conn)
        if rows is None:  # a dump of one piece (older goex): all of it as the agent role
            _as_role(conn, self.role, _runnable(script))
        else:  # objects as the owner (nothing is evaluated), then what evaluates agent SQL as the agent
            conn.execute(_runnable(script))
            _as_role(conn, self.role, _runnable(rows))
        conn.execute("COMMIT")

    # the template's steps (see ServerEngine._revert_rows)

    def _examine(self, conn: psycopg.Connection, table: Any, lock: bool) -> tuple[str, str, list[str]]:
        steady = self._steady.get(id(conn))
        state, problems = _examine(conn, table, lock, steady["shapes"] if steady else None)
        return state, table["table"], problems

    def _undo_rows(self, conn: psycopg.Connection, plans: list[Plan], force: bool, evidence: Any) -> None:
        """The rows of every table not yet back in its state before the action, set back (with
        session_replication_role = replica: no trigger and no foreign-key action fires), sent in
        one round trip (the server skips what follows an error)."""
        with conn.pipeline():
            for table, _ in plans:
                _delete_added(conn, table, force)
            for table, _ in plans:
                _insert_removed(conn, table)
        steady = self._steady.get(id(conn))
        if steady is not None:  # written now: no ALTER TABLE gets through until the transaction ends
            steady["shapes"].update((table["table"], table["shape"]) for table, _ in plans)

    def _broken(self, conn: psycopg.Connection, plans: list[Plan], force: bool, evidence: Any) -> list[str]:
        """Under force too: undo never leaves a reference dangling."""
        return [f"{t}: {w}" for t, w in self._dangling(conn, plans)]

    def _dangling(self, conn: psycopg.Connection, plans: list[Plan]) -> list[tuple[str, str]]:
        steady = self._steady.get(id(conn))
        names = tuple(sorted({t["table"] for t, _ in plans}))
        links = steady["links"].get(names) if steady is not None else None
        if links is None:
            with conn.pipeline():  # pinned in the same round trip: code of the agent's evaluated by the undo
                conn.execute(_PIN)  # (an index expression) set nothing for us
                links = _links(conn, [t for t, _ in plans])
            if steady is not None:  # the tables are written: a new key to or from them waits for the end
                steady["links"][names] = links
        return _dangling(conn, plans, links) if links else []

    def committed(self, before: dict[str, Any], captured: dict[str, Any], get_blob: GetBlob) -> tuple[str, str]:
        dump_mode = captured.get("mode") == "dump"
        with self._own(fresh=dump_mode) as conn:
            status = None
            try:
                status = _one(conn, pgsql.SQL("SELECT pg_xact_status({}::xid8)").format(
                    pgsql.Literal(captured["xid"])))
            except psycopg.Error:
                _rollback(conn)
            if status == "committed":
                return "applied", ""
            if status == "aborted":
                return "reverted", ""
            if status == "in progress":
                return "review", (f"the action's transaction {captured['xid']} on {self.name} is still open; "
                                  "wait for it to end, then recover again")
            # the server no longer knows the transaction: read the state off the data
            conn.execute("BEGIN")
            if captured.get("mode") == "dump":
                if _fingerprint(_objects(conn)) == captured["after"]["objects"]:
                    return "applied", ""
                if _digest(_fingerprint(_objects(conn))) == before.get("fingerprint"):
                    return "reverted", ""
            else:
                states = {_examine(conn, t, lock=False)[0] for t in _tables(captured, get_blob)}
                if states <= {"after"}:
                    return "applied", ""
                if states == {"before"}:
                    return "reverted", ""
            return "review", f"{self.name} matches neither the state before nor the state after the action"

    def dump(self) -> str:
        return dump(self.url)

    def _describe(self, exc: Exception) -> tuple[str, str | None, bool]:
        assert isinstance(exc, psycopg.Error)
        position = exc.diag.statement_position
        return _message(exc), f"character {position}" if position else None, (exc.sqlstate or "").startswith("42601")


# -- row capture helpers ---------------------------------------------------------------------------


def changed_rows(captured: dict[str, Any], get_blob: GetBlob, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` rows a captured action removed or added, as {table, op, before, after} with
    each row in PostgreSQL's text form (an UPDATE is its old row removed and its new row added);
    and how many in all. Empty for actions kept as a dump (DDL)."""
    if captured.get("mode") != "rows":
        return [], 0
    out: list[dict[str, Any]] = []
    total = 0
    for table in _tables(captured, get_blob):
        name = f"{table['table']} ({', '.join(table.get('columns') or [])})"
        for row, net in table.get("rows") or []:
            total += 1
            if len(out) < limit:
                out.append({"table": name, "op": "", "before": row if net < 0 else None,
                            "after": row if net > 0 else None})
    return out, total


def _rows_capture(done: dict[str, Any], seqs: dict[str, Any], put_blob: PutBlob) -> dict[str, Any]:
    """The undo data of row changes, from what `goex.finish` returned (`seqs`: the sequences
    before the action)."""
    tables = done["tables"]
    body = json.dumps(tables, separators=(",", ":"), sort_keys=True).encode()
    out: dict[str, Any] = {"mode": "rows", "xid": done["xid"]}
    if len(body) > INLINE_LIMIT:
        out["tables_blobs"] = [put_blob(body[i:i + CHUNK]) for i in range(0, len(body), CHUNK)]
    else:
        out["tables"] = tables
    out["sequences"] = _changed_sequences(seqs, done["seqs"])
    out["after"] = {"xid": done["xid"], "rows": hashlib.sha256(body).hexdigest(),
                    "shapes": {t["table"]: t["shape"] for t in tables},
                    "sequences": {k: v[1] for k, v in out["sequences"].items()}}
    return out


def _tables(captured: dict[str, Any], get_blob: GetBlob) -> list[dict[str, Any]]:
    if "tables_blobs" in captured:
        return json.loads(b"".join(get_blob(c) for c in captured["tables_blobs"]))
    return captured.get("tables") or []


def _ident(name: str) -> pgsql.Composable:
    """A qualified name as the catalog queries wrote it (format('%I.%I'): already quoted)."""
    return pgsql.SQL(name)


def _examine(conn: psycopg.Connection, table: dict[str, Any], lock: bool,
             shapes: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Whether `table` shows the action's after-state ("after"), the state before it ("before"),
    or something else ("conflict", with what differs). `shapes`: column lists known to hold in
    this transaction (tables it has written), not read again."""
    name = _ident(table["table"])
    known = (shapes or {}).get(table["table"])
    shape = (known,) if known is not None else conn.execute(
        "SELECT md5(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)) "
        "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (table["table"],)).fetchone()
    if shape is None or shape[0] is None:
        return "conflict", ["the table is gone"]
    if shape[0] != table["shape"]:
        return "conflict", ["the table's columns changed since the action"]
    rows = table["rows"]
    values = [r[0] for r in rows]
    if table.get("key"):
        key = table["key"]
        mine = _key_of(name, key)
        theirs = pgsql.SQL(", ").join(pgsql.SQL("x.{}").format(pgsql.Identifier(k)) for k in key)
        query = pgsql.SQL(
            "SELECT u.r, row({mine})::text, cur.v FROM unnest(%s::text[]) AS u(r) LEFT JOIN LATERAL "
            "(SELECT ROW(x.*)::text AS v FROM ONLY {name} x WHERE ({theirs}) = ({mine}) {lock}) cur ON true").format(
            mine=mine, theirs=theirs, name=name, lock=pgsql.SQL("FOR UPDATE OF x" if lock else ""))
        found = conn.execute(query, (values,)).fetchall()
        keys = {r: k for r, k, _ in found}
        current = {k: v for _, k, v in found}
        after: dict[str, str | None] = {}
        then: dict[str, str | None] = {}
        for value, n in rows:
            k = keys[value]
            after.setdefault(k, None)
            then.setdefault(k, None)
            if n > 0:
                after[k] = value
            else:
                then[k] = value
        if all(current.get(k) == v for k, v in after.items()):
            return "after", []
        if all(current.get(k) == v for k, v in then.items()):
            return "before", []
        out = []
        for k, v in after.items():
            if current.get(k) != v:
                out.append(f"row {k} is {_short(current.get(k))}, the action left {_short(v)}")
        return "conflict", out[:20]
    counts_after = table.get("counts") or {}
    query = pgsql.SQL("SELECT ROW(x.*)::text, count(*) FROM ONLY {} x WHERE ROW(x.*)::text = ANY(%s) "
                      "GROUP BY 1").format(name)
    current = {v: int(c) for v, c in conn.execute(query, (values,)).fetchall()}
    if all(current.get(v, 0) == counts_after.get(v, 0) for v, _ in rows):
        return "after", []
    if all(current.get(v, 0) == counts_after.get(v, 0) - n for v, n in rows):
        return "before", []
    out = [f"row {_short(v)} occurs {current.get(v, 0)} times, the action left {counts_after.get(v, 0)}"
           for v, _ in rows if current.get(v, 0) != counts_after.get(v, 0)]
    return "conflict", out[:20]


_LINKS = """
SELECT format('%%I.%%I', cn.nspname, cc.relname), format('%%I.%%I', pn.nspname, pc.relname),
  (SELECT array_agg(a.attname::text ORDER BY k.o) FROM unnest(c.conkey) WITH ORDINALITY AS k(num, o)
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num),
  (SELECT array_agg(a.attname::text ORDER BY k.o) FROM unnest(c.confkey) WITH ORDINALITY AS k(num, o)
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num)
FROM pg_catalog.pg_constraint c
  JOIN pg_catalog.pg_class cc ON cc.oid = c.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace
  JOIN pg_catalog.pg_class pc ON pc.oid = c.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.contype = 'f'
  AND (c.conrelid = ANY(%(oids)s::regclass[]) OR c.confrelid = ANY(%(oids)s::regclass[]))
"""


def _links(conn: psycopg.Connection, tables: list[dict[str, Any]]) -> list[tuple[str, str, list[str], list[str]]]:
    """Foreign keys from or to `tables`: (referencing table, referenced table, columns, columns)."""
    if not tables:
        return []
    oids = [t["table"] for t in tables]
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(_LINKS, {"oids": oids}).fetchall()]


def _dangling(conn: psycopg.Connection, plans: list[tuple[dict[str, Any], str]],
              links: list[tuple[str, str, list[str], list[str]]]) -> list[tuple[str, str]]:
    """After an undo's row changes (in its transaction): references they leave dangling. A row
    another client wrote that points at a key the undo removed (the undo would orphan it, or with
    ON DELETE CASCADE take it along), and a row the undo puts back whose referenced key is gone."""
    touched = {t["table"]: t for t, state in plans if state != "before"}
    out: list[tuple[str, str]] = []
    for child, parent, cols, refs in links:
        fk = pgsql.SQL(", ").join(pgsql.SQL("c.{}").format(pgsql.Identifier(n)) for n in cols)
        ref = pgsql.SQL(", ").join(pgsql.SQL("p.{}").format(pgsql.Identifier(n)) for n in refs)
        gone = pgsql.SQL("NOT EXISTS (SELECT 1 FROM {parent} p WHERE ({ref}) = ({fk}))").format(
            parent=_ident(parent), ref=ref, fk=fk)
        if parent in touched:  # keys the undo removed from the referenced table
            removed = [v for v, n in touched[parent]["rows"] if n > 0]
            keys = pgsql.SQL(", ").join(pgsql.SQL("(u.r::{}).{}").format(_ident(parent), pgsql.Identifier(n))
                                        for n in refs)
            rows = conn.execute(pgsql.SQL(
                "SELECT ROW(c.*)::text FROM {child} c WHERE ({fk}) IN (SELECT {keys} FROM unnest(%s::text[]) AS u(r)) "
                "AND {gone} LIMIT 5").format(child=_ident(child), fk=fk, keys=keys, gone=gone),
                (removed,)).fetchall()
            out += [(child, f"row {_short(r)} references {parent} ({', '.join(refs)}) that undo would remove; "
                     "it was written outside this action") for (r,) in rows]
        if child in touched:  # rows the undo put back into the referencing table
            restored = [v for v, n in touched[child]["rows"] if n < 0]
            rows = conn.execute(pgsql.SQL(
                "SELECT ROW(c.*)::text FROM unnest(%s::text[]) AS u(r), LATERAL (SELECT (u.r::{child}).*) c "
                "WHERE ({fk}) IS NOT NULL AND {gone} LIMIT 5").format(child=_ident(child), fk=fk, gone=gone),
                (restored,)).fetchall()
            out += [(child, f"row {_short(r)} would be put back, but the {parent} row it references is gone "
                     "(removed outside this action)") for (r,) in rows]
    return out


def _key_of(name: pgsql.Composable, key: list[str]) -> pgsql.Composable:
    """The key columns of the row text `u.r` read as a row of table `name` (every name qualified:
    no column of the user's table can stand in for goex's aliases)."""
    return pgsql.SQL(", ").join(pgsql.SQL("(u.r::{}).{}").format(name, pgsql.Identifier(k)) for k in key)


def _short(value: str | None) -> str:
    if value is None:
        return "absent"
    return value if len(value) <= 80 else value[:77] + "..."


def _delete_added(conn: psycopg.Connection, table: dict[str, Any], force: bool) -> None:
    name = _ident(table["table"])
    if table.get("key"):
        key = table["key"]
        mine = _key_of(name, key)
        theirs = pgsql.SQL(", ").join(pgsql.SQL("x.{}").format(pgsql.Identifier(k)) for k in key)
        # every key the action touched is cleared: the rows it added, and (forced) whatever sits there now
        values = [v for v, n in table["rows"] if n > 0 or force]
        if values:
            conn.execute(pgsql.SQL("DELETE FROM ONLY {name} x USING unnest(%s::text[]) AS u(r) "
                                   "WHERE ({theirs}) = ({mine})").format(name=name, theirs=theirs, mine=mine),
                         (values,))
        return
    values = [v for v, n in table["rows"] if n > 0]
    counts = [n for v, n in table["rows"] if n > 0]
    if values:
        conn.execute(pgsql.SQL(
            "DELETE FROM ONLY {name} WHERE ctid = ANY(ARRAY(SELECT s.ctid FROM (SELECT x.ctid, ROW(x.*)::text AS j, "
            "row_number() OVER (PARTITION BY ROW(x.*)::text) AS rn FROM ONLY {name} x "
            "WHERE ROW(x.*)::text = ANY(%s)) s "
            "JOIN unnest(%s::text[], %s::int[]) AS d(j, n) ON d.j = s.j WHERE s.rn <= d.n))").format(name=name),
            (values, values, counts))


def _insert_removed(conn: psycopg.Connection, table: dict[str, Any]) -> None:
    values = [v for v, n in table["rows"] for _ in range(-n) if n < 0]
    if not values:
        return
    name = _ident(table["table"])
    cols = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in table["columns"])
    picks = pgsql.SQL(", ").join(pgsql.SQL("(s.v).{}").format(pgsql.Identifier(c)) for c in table["columns"])
    conn.execute(pgsql.SQL("INSERT INTO {name} ({cols}) OVERRIDING SYSTEM VALUE SELECT {picks} FROM "
                           "(SELECT u.r::{name} AS v FROM unnest(%s::text[]) AS u(r) OFFSET 0) s").format(
        name=name, cols=cols, picks=picks), (values,))


def _changed_sequences(then: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    return {k: [then[k], now[k]] for k in sorted(now) if k in then and then[k] != now[k]}


def _set_sequences(conn: psycopg.Connection, positions: dict[str, Any]) -> None:
    """Sequences set back to [last_value, is_called] as an entry found them (those still there)."""
    for name, then in positions.items():
        if _sequence(conn, name) is not None:
            conn.execute(pgsql.SQL("SELECT setval({}::regclass, {}, {})").format(
                pgsql.Literal(name), pgsql.Literal(then[0]), pgsql.Literal(then[1])))


def _sequence(conn: psycopg.Connection, name: str) -> list[Any] | None:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    if not (row and row[0]):
        return None
    got = conn.execute(pgsql.SQL("SELECT last_value, is_called FROM {}").format(_ident(name))).fetchone()
    return [got[0], got[1]] if got else None


def _reset_sequences(conn: psycopg.Connection, then: dict[str, Any], left: dict[str, Any] | None) -> None:
    """Sequences advanced by work that was rolled back, set back. With `left` (what that work left),
    only sequences nobody has used since are touched."""
    if not then or conn.closed or (left is not None and all(left.get(k) == v for k, v in then.items())):
        return
    try:
        now = _one(conn, f"SELECT goex.sequences_{VERSION}()")
        for name, was in then.items():
            cur = now.get(name)
            if cur is None or cur == was:
                continue
            if left is not None and left.get(name) != cur:
                continue
            conn.execute(pgsql.SQL("SELECT setval({}::regclass, {}, {})").format(
                pgsql.Literal(name), pgsql.Literal(was[0]), pgsql.Literal(was[1])))
    except psycopg.Error:
        _rollback(conn)


# -- dump mode helpers -----------------------------------------------------------------------------


def _pg_dump(url: str, snapshot: str | None = None, section: str = "all") -> bytes:
    """A plain pg_dump script. `section` "schema": the objects (pre-data, with DROP ... IF EXISTS
    first), restored as the URL's user; "rows": rows, sequence positions, indexes, constraints,
    triggers and rules (data and post-data), restored as the agent role, since restoring them
    evaluates expressions the agent wrote (CHECK, index expressions, generated columns)."""
    binary = os.environ.get("GOEX_PG_DUMP") or shutil.which("pg_dump") or "/usr/bin/pg_dump"
    args = [binary, "--format=plain", "--inserts", "--rows-per-insert=1000", "--exclude-schema=goex",
            "--no-subscriptions", "--quote-all-identifiers", f"--dbname={url}"]
    if section == "schema":
        args += ["--section=pre-data", "--clean", "--if-exists"]
    elif section == "rows":
        # owners and default privileges stay as they are (the schema part sets owners)
        args += ["--section=data", "--section=post-data", "--no-owner", "--no-privileges", "--no-publications",
                 "--no-security-labels"]
    else:
        args += ["--clean", "--if-exists"]
    if snapshot:
        args.append(f"--snapshot={snapshot}")
    done = subprocess.run(args, capture_output=True)
    if done.returncode != 0:
        raise ActionFailed(f"sql.execute: pg_dump failed, nothing was applied: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _pg_dumps(url: str, snapshot: str) -> tuple[bytes, bytes]:
    """The schema and rows parts of one snapshot, dumped side by side."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        schema = pool.submit(_pg_dump, url, snapshot, "schema")
        rows = pool.submit(_pg_dump, url, snapshot, "rows")
        return schema.result(), rows.result()


def _runnable(script: bytes) -> bytes:
    """A pg_dump script as plain SQL: its psql meta-commands (`\\restrict KEY` after the header
    comment, `\\unrestrict KEY` at the end) removed. Only those two lines: a line inside a quoted
    name or literal is never touched."""
    lines = script.split(b"\n")
    first = next((i for i, line in enumerate(lines) if line and not line.startswith(b"--")), None)
    if first is None or not lines[first].startswith(b"\\restrict "):
        return script
    end = b"\\unrestrict " + lines[first][len(b"\\restrict "):]
    last = max((i for i, line in enumerate(lines) if line == end), default=None)
    return b"\n".join(line for i, line in enumerate(lines) if i not in (first, last))


def _as_role(conn: psycopg.Connection, role: str, script: bytes) -> None:
    """Run `script` in the open transaction of a superuser connection, as `role`, with no way back:
    inside a SECURITY DEFINER function PostgreSQL refuses SET ROLE, SET SESSION AUTHORIZATION and
    superuser-only settings. The function is temporary and created in this transaction, so no other
    session can see or change it; it is dropped before the commit."""
    conn.execute("CREATE FUNCTION pg_temp.goex_as_role(script text) RETURNS void LANGUAGE plpgsql "
                 "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $goex$ BEGIN EXECUTE script; END $goex$")
    conn.execute(pgsql.SQL("ALTER FUNCTION pg_temp.goex_as_role(text) OWNER TO {}").format(pgsql.Identifier(role)))
    conn.execute("SELECT pg_temp.goex_as_role(%s)", (script.decode(conn.info.encoding, errors="strict"),))
    conn.execute("DROP FUNCTION pg_temp.goex_as_role(text)")


def _stored(part: dict[str, Any], get_blob: GetBlob, db: str) -> bytes:
    script = b"".join(get_blob(c) for c in part["chunks"])
    if hashlib.sha256(script).hexdigest() != part["sha"]:
        raise ActionFailed(f"undo on {db}: the stored dump does not match its checksum")
    return script


def _drop_user_objects(conn: psycopg.Connection) -> None:
    """Every relation and type in the user schemas (not those of extensions): what the dump
    recreates, and what the action may have created."""
    member = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{cat}'::regclass AND d.objid = {oid} "
              "AND d.deptype = 'e')")
    rels = conn.execute(
        "SELECT format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c JOIN pg_namespace n "
        f"ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_NS} AND "
        + member.format(cat="pg_class", oid="c.oid")
        + " AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend o "
        "WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid AND o.refclassid = 'pg_class'::regclass "
        "AND o.deptype IN ('a', 'i'))) ORDER BY c.oid").fetchall()
    words = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE", "f": "FOREIGN TABLE"}
    for name, kind in rels:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        if exists and exists[0]:
            conn.execute(pgsql.SQL("DROP {} IF EXISTS {} CASCADE").format(pgsql.SQL(words[kind]), _ident(name)))
    types = conn.execute(
        "SELECT format('%I.%I', n.nspname, t.typname), t.typtype FROM pg_type t JOIN pg_namespace n "
        f"ON n.oid = t.typnamespace WHERE {_USER_NS} AND (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND "
        "(SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')) AND "
        + member.format(cat="pg_type", oid="t.oid")).fetchall()
    for name, kind in types:
        exists = conn.execute("SELECT to_regtype(%s) IS NOT NULL", (name,)).fetchone()
        if exists and exists[0]:
            word = "DOMAIN" if kind == "d" else "TYPE"
            conn.execute(pgsql.SQL("DROP {} IF EXISTS {} CASCADE").format(pgsql.SQL(word), _ident(name)))


def _fingerprint(objects: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256(text.encode()).hexdigest()[:32] for name, text in objects.items()}


def _digest(fingerprint: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _object_differences(then: dict[str, str], now: dict[str, str], db: str) -> list[tuple[str, str]]:
    out = []
    for name in sorted(set(then) | set(now)):
        if name not in now:
            out.append((f"{db}: {name}", "gone since the action"))
        elif name not in then:
            out.append((f"{db}: {name}", "created since the action"))
        elif then[name] != now[name]:
            out.append((f"{db}: {name}", "changed since the action"))
    return out


# -- dump ------------------------------------------------------------------------------------------


def _objects(conn: psycopg.Connection) -> dict[str, str]:
    """Canonical text of every object in the user schemas, by name; rows sorted."""
    out: dict[str, str] = {}
    for (nsp,) in conn.execute(f"SELECT n.nspname FROM pg_namespace n WHERE {_USER_NS}").fetchall():
        out[f"schema {nsp}"] = f"schema {nsp}"
    rels = conn.execute(
        "SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
        f"AND {_USER_NS}").fetchall()
    oids = [r[0] for r in rels]
    lines: dict[int, list[str]] = {oid: [] for oid in oids}
    for rel, name, typ, notnull, default, identity, generated in conn.execute(
            "SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated FROM pg_attribute a "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum",
            (oids,)).fetchall():
        text = f"  column {name} {typ}" + (" not null" if notnull else "")
        if generated:
            text += f" generated always as ({default}) stored"
        elif default is not None:
            text += f" default {default}"
        if identity:
            text += " identity " + ("always" if identity == "a" else "by default")
        lines[rel].append(text)
    extra: dict[int, list[str]] = {oid: [] for oid in oids}
    for rel, text in conn.execute(
            "SELECT conrelid, 'constraint ' || conname || ': ' || pg_get_constraintdef(oid, true) "
            "FROM pg_constraint WHERE conrelid = ANY(%s)", (oids,)).fetchall():
        extra[rel].append("  " + text)
    for rel, text in conn.execute(
            "SELECT indrelid, 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = ANY(%s)",
            (oids,)).fetchall():
        extra[rel].append("  " + text)
    for rel, text in conn.execute(
            "SELECT tgrelid, 'trigger ' || pg_get_triggerdef(oid, true) || ' [' || tgenabled::text || ']' "
            "FROM pg_trigger "
            "WHERE tgrelid = ANY(%s) AND NOT tgisinternal AND tgname <> 'goex_capture'", (oids,)).fetchall():
        extra[rel].append("  " + text)
    for rel, text in conn.execute(
            "SELECT ev_class, 'rule ' || pg_get_ruledef(oid, true) FROM pg_rewrite WHERE ev_class = ANY(%s) "
            "AND rulename <> '_RETURN'", (oids,)).fetchall():
        extra[rel].append("  " + text)
    for rel, text in conn.execute(
            "SELECT c.oid, 'owned by ' || format('%%I.%%I', n.nspname, t.relname) || '.' || quote_ident(a.attname) "
            "FROM pg_class c JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid "
            "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
            "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = t.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid "
            "WHERE c.oid = ANY(%s) AND c.relkind = 'S'", (oids,)).fetchall():
        extra[rel].append("  " + text)
    for oid, name, kind in rels:
        words = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "S": "sequence",
                 "f": "foreign table"}[kind]
        body = [f"{words} {name}"] + (lines[oid] if kind != "S" else []) + sorted(extra[oid])
        if kind in ("v", "m"):
            body.append("  definition " + " ".join((_one(conn, "SELECT pg_get_viewdef(%s::oid, true)", (oid,))
                                                    or "").split()))
        if kind == "S":
            last, called = conn.execute(pgsql.SQL("SELECT last_value, is_called FROM {}").format(_ident(name))
                                        ).fetchone() or (None, None)
            params = conn.execute("SELECT format_type(seqtypid, NULL), seqstart, seqincrement, seqmin, seqmax, "
                                  "seqcache, seqcycle FROM pg_sequence WHERE seqrelid = %s", (oid,)).fetchone()
            body.append(f"  parameters {params}")
            body.append(f"  last_value {last} is_called {called}")
        if kind in ("r", "m"):
            populated = kind == "r" or _one(conn, "SELECT relispopulated FROM pg_class WHERE oid = %s", (oid,))
            if populated:
                rows = [r[0] for r in conn.execute(
                    pgsql.SQL("SELECT ROW(x.*)::text FROM ONLY {} x").format(_ident(name))).fetchall()]
                body += ["  row " + r for r in sorted(rows)]
        out[f"{words} {name}"] = "\n".join(body)
    for name, text in conn.execute(
            "SELECT format('%I.%I', n.nspname, p.proname) || '(' || pg_get_function_identity_arguments(p.oid) || ')', "
            "pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            f"WHERE {_USER_NS} AND p.prokind IN ('f', 'p') AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE "
            "d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')").fetchall():
        out[f"function {name}"] = f"function {name}\n  " + "\n  ".join(text.strip().splitlines())
    for name, labels in conn.execute(
            "SELECT format('%I.%I', n.nspname, t.typname), (SELECT string_agg(quote_literal(e.enumlabel), ', ' "
            "ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) FROM pg_type t "
            f"JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'e' AND {_USER_NS}").fetchall():
        out[f"enum {name}"] = f"enum {name} ({labels})"
    return out


def dump(url: str) -> str:
    """Canonical text of the whole database (every user schema; goex's own objects left out):
    tables with their columns, constraints, indexes, triggers and sorted rows, views, sequences
    with their positions, functions and enums, every part in a fixed order."""
    url = split_url(url)[0]
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"SET search_path = {_PATH}; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            objects = _objects(conn)
        finally:
            conn.execute("ROLLBACK")
    return "\n".join(objects[k] for k in sorted(objects)) + "\n"


# -- small helpers ---------------------------------------------------------------------------------


def _after_pin(conn: psycopg.Connection, query: pgsql.Composable, then: str = "") -> tuple[Any, ...]:
    """The row of `query`, run right after the search path is pinned (and followed by `then`,
    e.g. ROLLBACK), in one round trip."""
    cur = conn.execute(pgsql.SQL("{}; {}{}").format(pgsql.SQL(_PIN), query, pgsql.SQL(f"; {then}" if then else "")))
    cur.nextset()
    row = cur.fetchone()
    assert row is not None
    return tuple(row)


class _Sent(NamedTuple):
    """A query as `PQsendQueryParams` takes it."""

    query: bytes
    params: Any
    types: Any
    formats: Any


def _sent(conn: psycopg.Connection, text: str, params: Any = None) -> _Sent:
    """`text` and `params` converted and the parameters dumped by psycopg's own `PostgresQuery` and
    the connection's adapters, as `Cursor.execute` converts them (bound server-side, never put in
    the text)."""
    query = PostgresQuery(Transformer(conn))
    query.convert(text, params)
    return _Sent(query.query, query.params, query.types, query.formats)


def _at_once(conn: psycopg.Connection, queries: list[_Sent]) -> list[Any]:
    """The queries run in one pipeline written at once: each sent with `PQsendQueryParams`, as
    `Cursor.execute` sends it in pipeline mode, then one sync and one flush, so the server runs them
    back to back without waiting on the client between them. Each query's result, in order (after
    an error the server skips the rest: their results are PIPELINE_ABORTED; an explicit transaction
    is left failed). The connection is out of pipeline mode when this returns, or closed when it
    cannot be brought out."""
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.enter_pipeline_mode()
        try:
            for query in queries:
                pgconn.send_query_params(query.query, query.params, param_formats=query.formats,
                                         param_types=query.types, result_format=pq.Format.TEXT)
            pgconn.pipeline_sync()
            return conn.wait(_exchange(pgconn, len(queries)))
        finally:
            try:
                pgconn.exit_pipeline_mode()
            except psycopg.Error:  # results left unread (interrupted, or the connection broke)
                conn.close()


def _command(conn: psycopg.Connection, command: bytes) -> None:
    """`conn.execute(command)` for a command without parameters or rows, without the cursor: the
    same query message (the simple protocol), the same wait, the same error raised."""
    if conn.pgconn.status != pq.ConnStatus.OK:
        conn.execute(command)  # (raises)
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query(command)
        results = conn.wait(generators.execute(pgconn))
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _exchange(pgconn: Any, n: int) -> Any:
    """The generator `_at_once` waits on: the pipeline flushed, then its `n` results and the sync."""
    yield from generators.send(pgconn)
    results = []
    for _ in range(n):
        got = yield from generators.fetch_many(pgconn)
        if not got:
            raise psycopg.OperationalError("the pipeline ended early")
        results.append(got[0])
    yield from generators.fetch_many(pgconn)  # the sync
    return results


def _one(conn: psycopg.Connection, query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _rollback(conn: psycopg.Connection) -> None:
    if conn.closed:
        return
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip().splitlines()[0]
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    return text
