"""A real PostgreSQL server for tests and benchmarks, started and stopped by them, on loopback only.

`running_server()` initdb's a cluster in a fresh temporary folder (data, unix socket and log all inside
it), starts it on a free 127.0.0.1 port with password authentication (scram-sha-256) for TCP clients,
creates the role `nx` (password `nx-test-pw`) and its database `nx`, yields a `PgServer`, and stops the
server and removes the folder at the end. `PgServer.create_database()` makes a fresh empty database owned
by `nx` and returns its `postgresql://nx:nx-test-pw@127.0.0.1:PORT/NAME` URL, so each test starts clean.

Binaries: the Debian/Ubuntu `postgresql` package (`initdb`, `pg_ctl`, `postgres` on PATH or under
/usr/lib/postgresql/<major>/bin; `.ci/run` installs it). PostgreSQL refuses to run as root, so when the
tests run as root (CI does) the server's commands run as the `postgres` system user the package creates
(`nobody` where it does not exist), through `subprocess`'s `user=`/`group=`, and the folder is theirs.

The cluster trades durability for speed (fsync, synchronous_commit and full_page_writes off): it lives
for one test session. `max_connections` is 300: several worker processes each hold a Dagster pool and
DuckLake connections.

Fixtures (tests/conftest.py): `pg_server` (one per session) and `pg_url` (a fresh database per test).
Where no PostgreSQL is installed the fixtures skip, except under CI (`CI` set), where they fail.

Run it as a process for benchmarks: `python -m tests.pg_server` prints the URL of database `nx` and
serves until interrupted.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "nx"
PASSWORD = "nx-test-pw"
ADMIN = "nx_admin"
DATABASE = "nx"
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "64MB",
}


class NoPostgres(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres: PATH first, else the newest Debian major version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    majors = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if majors:
        return Path(majors[-1]).parent
    raise NoPostgres("no PostgreSQL server (initdb, pg_ctl): `apt-get install postgresql` (Debian/Ubuntu)")


def _server_user() -> str | None:
    """The system user that runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise NoPostgres("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PgServer:
    """A running server: `url()` of a database, `create_database()` for a fresh one."""

    port: int
    folder: Path
    host: str = "127.0.0.1"
    user: str = USER
    password: str = PASSWORD

    def url(self, database: str = DATABASE, user: str | None = None, password: str | None = None) -> str:
        return (f"postgresql://{user or self.user}:{password or self.password}"
                f"@{self.host}:{self.port}/{database}")

    def admin_sql(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser (autocommit: CREATE DATABASE cannot run in a transaction)."""
        import psycopg2

        con = psycopg2.connect(host=self.host, port=self.port, user=ADMIN, password=self.password, dbname=database)
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(sql)
        finally:
            con.close()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by `nx`; returns its URL."""
        name = name or f"nx_{secrets.token_hex(4)}"
        self.admin_sql(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return self.url(name)


def _run(cmd: list[str], user: str | None, **kw) -> subprocess.CompletedProcess:
    as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
    kw.setdefault("cwd", "/")  # the server user may not be allowed into ours
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **as_user, **kw)


@contextmanager
def running_server(tries: int = 3) -> Iterator[PgServer]:
    """Start a throw-away cluster (see the module docstring); stop it and remove its folder on exit."""
    bin_dir = server_binaries()
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="nx-pg-"))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    (folder / "pw").write_text(PASSWORD + "\n")
    if user:
        entry = pwd.getpwnam(user)
        for path in (folder, sockets, folder / "pw"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", ADMIN, f"--pwfile={folder / 'pw'}",
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
             user, env={**os.environ, "TZ": "UTC"})
        for attempt in range(tries):  # the free port may be taken between the probe and the bind
            port = _free_port()
            options = " ".join([f"-p {port}", f"-k {sockets}"] + [f"-c {k}={v}" for k, v in _SETTINGS.items()])
            try:
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
                      "-o", options, "-w", "-t", "60", "start"], user)
                started = True
                break
            except subprocess.CalledProcessError:
                if attempt == tries - 1:
                    log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
                    raise RuntimeError(f"PostgreSQL did not start on port {port}:\n{log[-2000:]}") from None
                time.sleep(0.5)
        server = PgServer(port=port, folder=folder)
        server.admin_sql(f"CREATE ROLE \"{USER}\" LOGIN PASSWORD '{PASSWORD}'")
        server.create_database(DATABASE)
        yield server
    finally:
        if started:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    with running_server() as server:
        print(server.url(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
