"""The private PostgreSQL cluster the PostgreSQL ledger tests run on (tests/pg_cluster.py, the
`pg_cluster` and `pg_dsn` fixtures in tests/conftest.py): durable settings, one database per
test, its own loopback port (never the system server on 5432), databases really dropped, and a
failed start that says why."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from pg_cluster import PgCluster, PgClusterError, pg_bindir


def one(dsn: str, query: str, *args: object) -> object:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return conn.execute(query, args).fetchone()[0]


def test_the_cluster_runs_with_the_durable_settings(pg_cluster: PgCluster, pg_dsn: str) -> None:
    assert one(pg_dsn, "SHOW synchronous_commit") == "on"
    assert one(pg_dsn, "SHOW fsync") == "on"
    assert one(pg_dsn, "SHOW max_connections") == "200"
    assert one(pg_dsn, "SHOW shared_buffers") == "64MB"
    assert one(pg_dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert one(pg_dsn, "SHOW unix_socket_directories") == str(pg_cluster.directory)
    assert one(pg_dsn, "SHOW server_encoding") == "UTF8"
    assert one(pg_dsn, "SHOW lc_collate") == "C"


def test_it_listens_on_127_0_0_1_on_its_own_port_not_the_system_server(pg_cluster: PgCluster, pg_dsn: str) -> None:
    parts = conninfo.conninfo_to_dict(pg_dsn)
    port = int(parts["port"])
    assert parts["host"] == "127.0.0.1"
    assert port != 5432
    assert port == pg_cluster.port
    assert pg_dsn == f"postgresql://postgres@127.0.0.1:{port}/{parts['dbname']}"
    assert one(pg_dsn, "SELECT inet_server_port()") == port
    assert str(one(pg_dsn, "SELECT inet_server_addr()")) == "127.0.0.1"
    assert one(pg_dsn, "SHOW data_directory") == str(pg_cluster.data_dir)
    assert one(pg_dsn, "SELECT current_database()") == parts["dbname"]


def test_the_server_runs_the_binaries_pg_bindir_found(pg_cluster: PgCluster, pg_dsn: str) -> None:
    bindir = pg_bindir()
    assert bindir == pg_cluster.bindir
    version = subprocess.run([str(bindir / "initdb"), "--version"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    assert version.startswith("initdb (PostgreSQL) ")
    major = int(version.split()[2].split(".")[0])
    assert int(one(pg_dsn, "SHOW server_version_num")) // 10000 == major
    assert major >= 13  # DROP DATABASE ... WITH (FORCE)


def test_two_databases_are_separate(pg_cluster: PgCluster) -> None:
    with pg_cluster.database() as first, pg_cluster.database() as second:
        assert first != second
        first_name = conninfo.conninfo_to_dict(first)["dbname"]
        second_name = conninfo.conninfo_to_dict(second)["dbname"]
        assert first_name.startswith("eum_test_") and second_name.startswith("eum_test_")
        with psycopg.connect(first, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
            conn.execute("INSERT INTO only_here VALUES (7)")
        assert one(first, "SELECT x FROM only_here") == 7
        assert one(first, "SELECT to_regclass('public.only_here')::text") == "only_here"
        assert one(second, "SELECT to_regclass('public.only_here')::text") is None
        assert one(second, "SELECT current_database()") == second_name


def test_a_dropped_database_is_gone_even_with_a_connection_open(pg_cluster: PgCluster) -> None:
    admin = pg_cluster.dsn("postgres")
    with pg_cluster.database() as dsn:
        name = conninfo.conninfo_to_dict(dsn)["dbname"]
        assert one(admin, "SELECT count(*) FROM pg_database WHERE datname = %s", name) == 1
        held = psycopg.connect(dsn, autocommit=True)
        assert held.execute("SELECT 1").fetchone()[0] == 1
    try:
        assert one(admin, "SELECT count(*) FROM pg_database WHERE datname = %s", name) == 0
        with pytest.raises(psycopg.OperationalError):  # WITH (FORCE) ended it
            held.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match=f'database "{name}" does not exist'):
            psycopg.connect(dsn, connect_timeout=10)
    finally:
        held.close()


def test_drop_database_refuses_a_dsn_of_another_server_or_a_system_database(pg_cluster: PgCluster) -> None:
    system = "postgresql://postgres@127.0.0.1:5432/postgres"
    with pytest.raises(ValueError, match=f"not a database of this cluster \\(127.0.0.1:{pg_cluster.port}\\)"):
        pg_cluster.drop_database(system)
    with pytest.raises(ValueError, match="refusing to drop 'postgres'"):
        pg_cluster.drop_database(pg_cluster.dsn("postgres"))
    assert one(pg_cluster.dsn("postgres"), "SELECT count(*) FROM pg_database WHERE datname = 'postgres'") == 1


def test_a_failed_start_raises_with_the_server_log_and_leaves_nothing(pg_cluster: PgCluster) -> None:
    # pg_cluster only makes this file skip (or fail under CI) where PostgreSQL is missing
    base = Path(tempfile.mkdtemp(prefix="eum-pg-test-"))
    try:
        base.chmod(0o755)  # as root the cluster's temp dir inside must be reachable by the postgres user
        cluster = PgCluster(base_dir=base, settings={"max_connections": "lots"})
        with pytest.raises(PgClusterError) as failed:
            cluster.start()
        message = str(failed.value)
        assert message.startswith("pg_ctl start failed (rc 1) on 127.0.0.1:")
        assert 'invalid value for parameter "max_connections": "lots"' in message
        assert "--- last lines of server.log ---" in message
        assert cluster.directory is None and cluster.port is None
        assert list(base.iterdir()) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)
