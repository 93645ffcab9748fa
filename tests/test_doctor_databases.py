"""`goex doctor --db`: per database, the identity agent SQL runs as, asked of the real server."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import psycopg
import pymysql
import pytest

from conftest import run_cli
from goex.adapters.sql.mysql import drop_agent_account

PG = "postgresql://postgres@127.0.0.1:5432"
MY = "mysql://root@127.0.0.1:3306"


def _doctor(*args: str) -> tuple[int, dict]:
    done = run_cli("doctor", "--json", "--databases-only", *args)
    assert "Traceback" not in done.err, done.err
    return done.returncode, json.loads(done.out)


@pytest.fixture
def servers(tmp_path: Path):
    name = "goex_doc_" + secrets.token_hex(5)
    with psycopg.connect(f"{PG}/test", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True) as conn:
        conn.cursor().execute(f"CREATE DATABASE `{name}`")
    sqlite3.connect(tmp_path / "app.db").execute("CREATE TABLE t(a)").connection.close()
    try:
        yield name, tmp_path
    finally:
        with psycopg.connect(f"{PG}/test", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        with pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        drop_agent_account(f"{MY}/{name}")


def test_doctor_reports_the_least_privileged_identity_of_each_database(servers):
    name, root = servers
    code, report = _doctor("--root", str(root), "--db", "main=sqlite:///app.db", "--db", f"pg={PG}/{name}",
                           "--db", f"my={MY}/{name}")
    dbs = report["databases"]
    assert code == 0, report
    assert dbs["main"]["safe"] and dbs["main"]["runs_as"] == "sqlite authorizer"
    assert dbs["pg"]["safe"] and dbs["pg"]["dangerous"] == [] and dbs["pg"]["runs_as"] != "postgres"
    assert dbs["my"]["safe"] and dbs["my"]["dangerous"] == [] and not dbs["my"]["runs_as"].startswith("root")
    # what doctor says is what the server says: the agent role holds no superuser attribute
    with psycopg.connect(f"{PG}/{name}") as conn:
        row = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
                           (dbs["pg"]["runs_as"],)).fetchone()
    assert row == (False, False)


def test_doctor_names_what_a_dangerous_identity_holds(servers):
    name, _ = servers
    code, report = _doctor("--db", f"pg={PG}/{name}?goex_role=postgres",
                           "--db", f"my={MY}/{name}?goex_account=root&goex_password=")
    dbs = report["databases"]
    assert code == 1
    assert not dbs["pg"]["safe"] and "SUPERUSER" in dbs["pg"]["dangerous"]
    assert not dbs["my"]["safe"] and any("*.*" in d for d in dbs["my"]["dangerous"])


def test_doctor_reports_a_database_it_cannot_reach_as_unchecked():
    code, report = _doctor("--db", "pg=postgresql://postgres@127.0.0.1:1/nothing")
    assert code == 1 and not report["databases"]["pg"]["safe"]
    assert "connect" in report["databases"]["pg"]["detail"]
