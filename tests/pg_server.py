"""A real PostgreSQL 15 server in a temporary directory, for tests and the benchmark.

The server runs as the unprivileged ``postgres`` system user (created when
missing, as ``initdb`` refuses to run as root), listens on 127.0.0.1 on a free
port and a private socket directory, and requires a password (SCRAM) for the
roles it creates. :meth:`PostgresServer.stop` and :meth:`start` let a test kill
the database under a running gateway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path(os.environ.get("STOCKADE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER_PASSWORD = "pg-super-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
        return pwd.getpwnam(name)


class PostgresServer:
    """One PostgreSQL cluster; ``dsn(user, password)`` connects to its ``postgres`` database."""

    def __init__(self, user: str = "postgres") -> None:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL 15 binaries not found in {BIN} "
                               "(apt-get install postgresql-15)")
        self.user = user
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="stockade-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.sockets.mkdir()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            account = _ensure_user(user)
            pw_file = self.root / "pw"
            pw_file.write_text(SUPERUSER_PASSWORD + "\n")
            for path in (self.root, self.sockets, pw_file):
                os.chown(path, account.pw_uid, account.pw_gid)
        else:
            pw_file = self.root / "pw"
            pw_file.write_text(SUPERUSER_PASSWORD + "\n")
        os.chmod(self.root, 0o700)
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "-A", "scram-sha-256", f"--pwfile={pw_file}", "--no-sync"])
        self.start()

    def _run(self, command: list[str]) -> str:
        if self._as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                   "-w", "-o", options, "start"])

    def stop(self) -> None:
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def psql(self, sql: str) -> str:
        """Run ``sql`` as the superuser over TCP with a password."""
        done = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql],
            capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def dsn(self, user: str, password: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/postgres"

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
