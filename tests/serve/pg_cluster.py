"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary folder, ``pg_ctl start`` on a
unix socket only (no TCP port to collide with), one fresh database per test, and ``pg_ctl stop``.

PostgreSQL refuses to run as root: under root (CI containers) the cluster runs as the ``postgres``
user (Debian's package creates it) or else ``nobody``, through ``setpriv``. Without ``initdb`` (on
PATH or under /usr/lib/postgresql/*/bin) the tests that need it are skipped, unless
``KEEL_REQUIRE_POSTGRES=1`` (set by .ci/run, which installs Debian's ``postgresql``) makes that a failure.
"""
from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRED = os.environ.get("KEEL_REQUIRE_POSTGRES") == "1"


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian's package keeps the server programs out of PATH.
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def missing_reason() -> str | None:
    """Why a cluster cannot start here, or None."""
    for name in ("initdb", "pg_ctl"):
        if not find_bin(name):
            return f"PostgreSQL's {name} not found on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        return "running as root (PostgreSQL refuses) and setpriv is missing to run it as another user"
    return None


class Cluster:
    def __init__(self):
        self.base = Path(tempfile.mkdtemp(dir="/tmp", prefix="keel-pg-"))  # short: unix socket paths are limited
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = random.randint(20_000, 60_000)  # names the socket file only (listen_addresses='')
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                user = pwd.getpwnam("nobody")
            self.prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
            os.chown(self.base, user.pw_uid, user.pw_gid)
        os.chmod(self.base, 0o755)

    def _run(self, *cmd: str, timeout: float = 180) -> None:
        proc = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, LC_ALL="C"))
        if proc.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}\n{log}")

    def start(self) -> "Cluster":
        self._run(find_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self._run(find_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "-o",
                  f"-k {self.base} -c listen_addresses='' -p {self.port} -c max_connections=200", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.base}&port={self.port}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = name or f"t{int(time.time() * 1000) % 10**9}_{random.randint(0, 10**6)}"
        with psycopg.connect(host=str(self.base), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
