"""A private PostgreSQL cluster for the tests and `eum bench --store postgresql`: its own data directory in a fresh temp dir, a
free loopback port, trust authentication, and only the postmaster it started is ever
signalled. The system server on 5432 is never used.

    cluster = PgCluster().start()
    dsn = cluster.create_database()     # postgresql://postgres@127.0.0.1:<port>/eum_test_<hex>
    ...
    cluster.drop_database(dsn)
    cluster.stop()                       # pg_ctl stop -m fast; the temp dir is removed

PostgreSQL refuses to run as root: as root, initdb, pg_ctl and so the postmaster run as the
`postgres` OS user (the Debian package creates it) with the temp dir chowned to it; as any
other user they run as that user. The test fixtures (`pg_cluster`, `pg_dsn`) are in
tests/conftest.py; .ci/run installs the binaries when they are missing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator


START_TIMEOUT_S = 60  # pg_ctl -w -t: initdb is done by then; this is the postmaster's start-up
STOP_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 120  # initdb (it syncs the new data dir) and each pg_ctl call, as a subprocess
CONNECT_TIMEOUT_S = 10
LOG_TAIL_LINES = 40
BIND_RETRIES = 3  # the port is free when picked, but another process may take it before the postmaster binds
SUPERUSER = "postgres"
DB_PREFIX = "eum_test_"

SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "max_connections": "200",
    "shared_buffers": "64MB",
}


class PgClusterError(RuntimeError):
    """The cluster could not be created, started or stopped (the message says what the server logged)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now. (tests/fault_harness.py has the same three lines, but
    importing it imports conftest, which imports this module.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl live: `pg_config --bindir` when it names a directory holding them,
    else the highest /usr/lib/postgresql/<major>/bin (Debian), else the directory of PATH's
    initdb; None when there is none."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True)
            candidate = Path(out.stdout.strip())
            if out.stdout.strip() and _has_server_binaries(candidate):
                return candidate
        except (OSError, subprocess.SubprocessError):
            pass
    versions = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        major = re.fullmatch(r"\d+(?:\.\d+)?", path.parent.name)
        if major and _has_server_binaries(path):
            versions.append((tuple(int(p) for p in path.parent.name.split(".")), path))
    if versions:
        return max(versions)[1]
    initdb = shutil.which("initdb")
    if initdb:
        # /usr/local/bin/initdb may be a symlink to the real bindir: resolve it to find pg_ctl and postgres beside it
        for candidate in (Path(initdb).parent, Path(initdb).resolve().parent):
            if _has_server_binaries(candidate):
                return candidate
    return None


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie postmaster has released its port and files)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class PgCluster:
    """One private cluster. `start()` runs initdb in a fresh temp dir (under `base_dir` when given),
    picks a free port and starts the postmaster; `stop()` stops it and removes the temp dir.
    `settings` are added to (or override) SETTINGS in postgresql.conf."""

    def __init__(self, *, bindir: Path | None = None, base_dir: Path | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir
        self.base_dir = base_dir
        self.settings = {**SETTINGS, **(settings or {})}
        self.directory: Path | None = None
        self.port: int | None = None
        self._user: pwd.struct_passwd | None = None

    # ------------------------------------------------------------------ paths and commands
    @property
    def data_dir(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "server.log"

    def _run(self, args: list[str], *, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Runs a PostgreSQL program as the postgres user when we are root, else as ourselves,
        with no PG* variable of ours (PGPORT, PGDATA...) leaking in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=str(self.directory))
        kw: dict = {}
        if self._user is not None:
            env.update(USER=self._user.pw_name, LOGNAME=self._user.pw_name)
            kw.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return subprocess.run(args, cwd=self.directory, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, **kw)

    def _log_tail(self, since: int = 0) -> str:
        """The last lines the server logged (from byte `since` on)."""
        try:
            with self.log_file.open("rb") as f:
                f.seek(since)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as exc:
            return f"(no server log: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(the server log is empty)"

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "PgCluster":
        assert self.directory is None, "already started"
        bindir = self.bindir or pg_bindir()
        if bindir is None:
            raise PgClusterError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = bindir
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise PgClusterError("running as root, and there is no `postgres` OS user to run PostgreSQL as "
                                     "(PostgreSQL refuses to run as root)") from None
        self.directory = Path(tempfile.mkdtemp(prefix="eum-pg-", dir=self.base_dir))
        atexit.register(self.stop)
        try:
            if self._user is not None:
                os.chown(self.directory, self._user.pw_uid, self._user.pw_gid)
            self._initdb()
            for attempt in range(1, BIND_RETRIES + 1):
                self.port = free_port()
                log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
                result = self._run([str(bindir / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S),
                                    "-D", str(self.data_dir), "-l", str(self.log_file), "-o", f"-p {self.port}"],
                                   timeout=START_TIMEOUT_S + 30)
                if result.returncode == 0:
                    return self
                logged = self._log_tail(since=log_start)
                bind_failed = "could not bind" in logged or "Address already in use" in logged
                if not (bind_failed and attempt < BIND_RETRIES):
                    raise PgClusterError(
                        f"pg_ctl start failed (rc {result.returncode}) on 127.0.0.1:{self.port}:\n"
                        f"{result.stdout}{result.stderr}\n--- last lines of {self.log_file.name} ---\n"
                        f"{logged}")
                self._kill_postmaster()  # a failed start leaves none, unless pg_ctl's wait timed out
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _initdb(self) -> None:
        assert self.bindir is not None
        result = self._run([str(self.bindir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", SUPERUSER,
                            "--encoding=UTF8", "--locale=C"])
        if result.returncode != 0:
            raise PgClusterError(f"initdb failed (rc {result.returncode}):\n{result.stdout}{result.stderr}")
        settings = {**self.settings, "unix_socket_directories": str(self.directory)}
        lines = ["", "# tests/pg_cluster.py: a private test cluster"]
        lines += [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:  # stays owned by postgres: append, not replace
            conf.write("\n".join(lines) + "\n")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _kill_postmaster(self) -> None:
        """SIGQUIT (immediate shutdown: the postmaster ends its children and exits), then SIGKILL:
        only the PID this cluster's postmaster.pid names."""
        pid = self._postmaster_pid()
        if pid is None or not _alive(pid):
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not _alive(pid):
                return
            if sig == signal.SIGKILL:
                raise PgClusterError(f"the postmaster (PID {pid}) did not exit after SIGKILL in {STOP_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stops the postmaster (pg_ctl stop -m fast; if that fails, signals the PID in
        postmaster.pid) and removes the temp dir. Safe to call twice."""
        atexit.unregister(self.stop)
        if self.directory is None:
            return
        try:
            if self.bindir is not None and self._postmaster_pid() is not None:
                try:
                    result = self._run([str(self.bindir / "pg_ctl"), "stop", "-m", "fast", "-w",
                                        "-t", str(STOP_TIMEOUT_S), "-D", str(self.data_dir)],
                                       timeout=STOP_TIMEOUT_S + 30)
                    stopped = result.returncode == 0
                except subprocess.TimeoutExpired:
                    stopped = False
                if not stopped:
                    self._kill_postmaster()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
            self.port = None

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ databases
    def dsn(self, dbname: str) -> str:
        assert self.port is not None, "not started"
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self):
        import psycopg  # here, not at the top: conftest imports this module even where no test needs PostgreSQL

        return psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)

    def create_database(self) -> str:
        """A new, uniquely named, empty database (from template1); its DSN."""
        from psycopg import sql

        name = f"{DB_PREFIX}{uuid.uuid4().hex[:16]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """DROP DATABASE ... WITH (FORCE) (open connections to it are ended). Only a DSN of this
        cluster is accepted: any other host or port raises ValueError before connecting."""
        from psycopg import conninfo, sql

        parts = conninfo.conninfo_to_dict(dsn)
        if parts.get("host") != "127.0.0.1" or str(parts.get("port")) != str(self.port):
            raise ValueError(f"not a database of this cluster (127.0.0.1:{self.port}): {dsn}")
        name = parts.get("dbname")
        if not name or name in ("postgres", "template0", "template1"):
            raise ValueError(f"refusing to drop {name!r}")
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database for the `with` block, dropped at its end (the `pg_dsn` fixture)."""
        dsn = self.create_database()
        try:
            yield dsn
        finally:
            self.drop_database(dsn)
