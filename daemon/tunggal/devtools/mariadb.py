"""Throwaway MariaDB servers for the test suite, from Debian's `mariadbd`.

Each server has its own data directory, port and socket, and the binlog settings Debezium
needs (ROW format, FULL row image). The machine's own MariaDB service is never touched.
MariaDB refuses to run as root unless told which user to be, so when we are root the server
runs as the `mysql` OS user, which owns the directories.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunggal.devtools.pgcluster import free_port

SERVER_USER = "mysql"
ROOT_PASSWORD = "tunggal"


def find_mariadbd() -> Path:
    for candidate in (os.environ.get("TUNGGAL_MARIADBD"), "/usr/sbin/mariadbd"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    found = shutil.which("mariadbd")
    if found is None:
        raise RuntimeError("no MariaDB server found: install Debian's mariadb-server package")
    return Path(found)


@dataclass
class MariaDbServer:
    """One mariadbd on 127.0.0.1:`port`; `version` (if set) is what it reports itself as."""

    port: int = field(default_factory=free_port)
    base_dir: Path | None = None
    server_id: int = 1
    version: str | None = None
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    _owned_dir: bool = False

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def socket(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "mariadb.sock"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "mariadb.log"

    def start(self, timeout: float = 60.0) -> MariaDbServer:
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="tunggal-mariadb-"))
            self._owned_dir = True
        as_root = os.geteuid() == 0
        if as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        if not self.data_dir.exists():
            install = [
                "mariadb-install-db",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]
            if as_root:
                install.append(f"--user={SERVER_USER}")
            done = subprocess.run(install, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed: {done.stderr.strip()[-2000:]}")
        args = [
            str(find_mariadbd()),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.base_dir / 'mariadb.pid'}",
            f"--log-error={self.log_file}",
            f"--server-id={self.server_id}",
            "--log-bin=binlog",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=200",
            *(["--version=" + self.version] if self.version else []),
            *([f"--user={SERVER_USER}"] if as_root else []),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)
        self._set_root_password()
        return self

    def _wait_ready(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {self._log_tail()}")
            try:
                pymysql.connect(unix_socket=str(self.socket), user="root").close()
                return
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1045:  # access denied: up, password already set
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd did not start: {self._log_tail()}") from exc
                time.sleep(0.2)

    def _set_root_password(self) -> None:
        import pymysql

        try:
            conn = pymysql.connect(unix_socket=str(self.socket), user="root")
        except pymysql.err.OperationalError:
            return  # a restarted server: the password is set already
        with conn, conn.cursor() as cur:
            # Debezium connects over TCP with a password; root@127.0.0.1 is what it sees.
            for host in ("localhost", "127.0.0.1", "%%"):  # %% is PyMySQL's escaped %
                account = f"'root'@'{host}'"
                create = f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s"
                cur.execute(create, (ROOT_PASSWORD,))
                cur.execute(f"ALTER USER {account} IDENTIFIED BY %s", (ROOT_PASSWORD,))
                cur.execute(f"GRANT ALL ON *.* TO {account.replace('%%', '%')} WITH GRANT OPTION")

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A PyMySQL connection as root, autocommit on unless `autocommit=False` is passed."""
        import pymysql

        settings: dict[str, Any] = {"autocommit": True, "charset": "utf8mb4", **kwargs}
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password=ROOT_PASSWORD,
            database=database,
            **settings,
        )

    def execute(self, statement: str, params: Any = None, database: str | None = None) -> list[Any]:
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        return name

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        if self._owned_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
