"""docs/deploy.md, run: the deployment guide's own commands on a scratch system layout.

What the guide's blocks are and how each is run (the guide's maintainer comment says the same):

- fenced `sh`: run in order with bash (`set -euo pipefail`), one shell per block, from a copy
  of the checkout, with /etc/tunggal, /opt/tunggal, /var/lib/tunggal, /etc/systemd/system and
  /usr/local/sbin moved under a scratch root, and the example hosts replaced by the test's
  servers;
- fenced `sh root` (the user account, ownership): run when the test runs as root, which is
  how the suite runs here; the account is the machine's own (`useradd` is not moved), as the
  fixtures' PostgreSQL runs as the machine's `postgres`;
- fenced `sh systemd`: no systemd runs here, so each line is done by the test: the daemon is
  the unit's ExecStart, started as the unit's User in its WorkingDirectory with its
  EnvironmentFile parsed as systemd parses it, stopped with SIGTERM (its KillSignal);
  `systemd-analyze verify --root` checks the unit against the scratch root when the tool is
  installed. A line the test does not know fails the test, so the guide cannot grow a step
  that nothing checks;
- fenced `sql`: the target server's preparation, run as postgres on the test's target server.
  The source server is prepared with the README's "PostgreSQL sources" SQL, which the guide
  links to, and the daemon then streams as that role: so that SQL is checked too.

The install is the guide's own: a wheel built from a copy of the checkout and
`pip install 'tunggal-<v>-py3-none-any.whl[embedded]'` into a fresh venv, about 25 s with the
machine's wheel cache (pip's configured index); a --no-deps or editable shortcut would not
check that the wheel carries everything the daemon needs. The upgrade installs a second wheel
whose version the test bumps, so it costs that once more.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO, sql, wait_until
from tunggal import native
from tunggal.devtools.pgcluster import PgCluster, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

GUIDE = REPO / "docs" / "deploy.md"
UNIT = REPO / "ops" / "tunggal.service"
README = REPO / "README.md"
# The system paths the guide writes to, moved under the scratch root.
MOVED = (
    "/etc/tunggal",
    "/opt/tunggal",
    "/var/lib/tunggal",
    "/etc/systemd/system",
    "/usr/local/sbin",
)
AS_ROOT = os.geteuid() == 0
# The PATH systemd gives a service, and a root shell's on Debian: /usr/bin/python3, not a
# Python only root can reach (pyenv under /root), since the service user runs the venv.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Block:
    section: str
    kind: str  # "sh", "sh root", "sh systemd", "sql", ...
    text: str


def guide_blocks() -> list[Block]:
    blocks: list[Block] = []
    section = ""
    lines = iter(GUIDE.read_text().splitlines())
    in_comment = False
    for line in lines:
        if in_comment or line.startswith("<!--"):
            in_comment = "-->" not in line
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("```") and line.strip() != "```":
            body: list[str] = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            blocks.append(Block(section, line[3:].strip(), "\n".join(body) + "\n"))
    return blocks


def section_blocks(section: str) -> list[Block]:
    found = [b for b in guide_blocks() if b.section == section]
    assert found, f"docs/deploy.md has no blocks under '## {section}'"
    return found


def readme_postgres_sql() -> str:
    text = README.read_text()
    part = text.split("## PostgreSQL sources", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```sql\n(.*?)```", part, flags=re.DOTALL)
    assert found, "README's PostgreSQL sources section has no sql block"
    return str(found[0])


def systemd_env(path: Path) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: KEY=VALUE lines, `#`/`;` comments, a value in
    single quotes taken as it is, one in double quotes with backslash escapes."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()), raw
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        env[key.strip()] = value
    return env


def unit_settings(path: Path) -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


class Scratch:
    """The scratch system: its root, the copy of the checkout, the servers, the daemon."""

    def __init__(self, root: Path, checkout: Path, source: PgCluster, target: PgCluster) -> None:
        self.root = root
        self.checkout = checkout
        self.source = source
        self.target = target
        self.metrics_port = free_port()
        self.release = ""
        self.daemon: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def moved(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def rewrite(self, text: str) -> str:
        out = []
        for line in text.splitlines(keepends=True):
            if "useradd" not in line:  # the account is the machine's: its home stays /var/lib
                for prefix in MOVED:
                    line = re.sub(
                        rf"(?<![\w.]){re.escape(prefix)}(?=/|\b)", f"{self.root}{prefix}", line
                    )
            line = line.replace("target-db.internal:5432", f"127.0.0.1:{self.target.port}")
            line = line.replace("eplanning-db.internal", "127.0.0.1")
            line = line.replace("port: 5432", f"port: {self.source.port}")
            line = re.sub(r"^RELEASE=\S+", f"RELEASE={self.release}", line)
            out.append(line)
        return "".join(out)

    def shell_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = f"{self.moved('/usr/local/sbin')}:{SYSTEM_PATH}"
        return env

    def sh(self, script: str, what: str) -> str:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + self.rewrite(script)],
            cwd=self.checkout,
            env=self.shell_env(),
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert done.returncode == 0, (
            f"{what} failed ({done.returncode}):\n{self.rewrite(script)}\n"
            f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}\n"
            f"the daemon's journal: {self.journal()[-3000:]}"
        )
        return done.stdout

    def run_section(self, section: str) -> str:
        """Every block of a section, in order; the output of its sh blocks."""
        out = []
        for block in section_blocks(section):
            if block.kind == "sh":
                out.append(self.sh(block.text, f"{section}: {block.text.strip()}"))
            elif block.kind == "sh root":
                if AS_ROOT:
                    out.append(self.sh(block.text, f"{section} (root): {block.text.strip()}"))
            elif block.kind == "sh systemd":
                for line in block.text.splitlines():
                    self.systemd(line.strip())
            elif block.kind == "sql":
                with psycopg.connect(self.target.dsn(), autocommit=True) as conn:
                    for statement in filter(str.strip, block.text.split(";")):
                        conn.execute(statement)
            else:
                raise AssertionError(f"{section}: a block fenced {block.kind!r} nothing runs")
        return "".join(out)

    # -- what the systemd lines do ------------------------------------------------------------
    def systemd(self, line: str) -> None:
        unit = self.moved("/etc/systemd/system/tunggal.service")
        if not line or line.startswith("#") or line == "systemctl daemon-reload":
            return
        if line == "systemd-analyze verify /etc/systemd/system/tunggal.service":
            self.verify_unit(unit)
        elif line == "systemctl enable --now tunggal":
            assert "WantedBy=multi-user.target" in unit.read_text()  # what enable links
            self.start()
        elif line == "journalctl -u tunggal -f":
            self.wait_ready()
        elif line == "systemctl restart tunggal":
            self.stop()
            self.start()
            self.wait_ready()
        else:
            raise AssertionError(f"a systemd line this test does not do: {line!r}")

    def verify_unit(self, unit: Path) -> None:
        tool = shutil.which("systemd-analyze")
        if tool is None:  # then the start below is the unit's only check
            return
        # The scratch root has what the unit needs and the OS's own units it is ordered after.
        units = self.moved("/usr/lib/systemd/system")
        if not units.exists():
            shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
            self.moved("/bin").mkdir(exist_ok=True)
            shutil.copy2("/bin/kill", self.moved("/bin/kill"))  # ExecReload's
        done = subprocess.run(
            [tool, "verify", f"--root={self.root}", str(unit)], capture_output=True, text=True
        )
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr

    def start(self) -> None:
        unit = unit_settings(self.moved("/etc/systemd/system/tunggal.service"))
        argv = self.rewrite(unit["ExecStart"]).split()
        env_file = self.moved(unit["EnvironmentFile"].lstrip("-"))
        # What systemd puts in a service's environment before its EnvironmentFile.
        env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
        if AS_ROOT:
            import pwd

            account = pwd.getpwnam(unit["User"])
            env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        env.update(systemd_env(env_file))
        log = self.root / f"journal-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.daemon = subprocess.Popen(
                argv,
                cwd=self.rewrite(unit["WorkingDirectory"]),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=unit["User"] if AS_ROOT else None,
                group=unit["Group"] if AS_ROOT else None,
                extra_groups=[] if AS_ROOT else None,
                umask=int(unit["UMask"], 8),
            )

    def journal(self) -> str:
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    def wait_ready(self) -> None:
        assert self.daemon is not None
        wait_until(
            lambda: "ready: reading from" in self.journal() or self.daemon.poll() is not None,
            timeout=120,
            message="the daemon ready",
            context=lambda: self.journal()[-3000:],
        )
        assert self.daemon.poll() is None, self.journal()[-3000:]

    def stop(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(timeout=60)
        assert code == 0, f"exit {code} on SIGTERM:\n{self.journal()[-3000:]}"

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    # Not under pytest's tmp_path: the service user must reach the scratch root, and
    # /tmp/pytest-of-root is root's alone.
    root = Path(tempfile.mkdtemp(prefix="tunggal-deploy-"))
    root.chmod(0o755)
    for system_dir in ("etc/systemd/system", "usr/local/sbin", "opt", "var/lib"):
        (root / system_dir).mkdir(parents=True)  # what every host has already
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, checkout / name)
    # mappings/: the wheel carries the demo's examples (pyproject's force-include). The suite's
    # compiled build stays behind, as in a fresh clone: the release must compile itself.
    for name in ("daemon", "ops", "mappings"):
        shutil.copytree(
            REPO / name,
            checkout / name,
            ignore=shutil.ignore_patterns("__pycache__", *native.BUILT),
        )
    source = PgCluster(name="deploy-source").start()
    target = PgCluster(name="deploy-target").start()
    s = Scratch(root, checkout, source, target)
    try:
        yield s
    finally:
        if s.daemon is not None and s.daemon.poll() is None:
            s.daemon.kill()
            s.daemon.wait(timeout=20)
        source.destroy()
        target.destroy()
        shutil.rmtree(root, ignore_errors=True)


def version_of(checkout: Path) -> str:
    found = re.search(r'^version = "([^"]+)"', (checkout / "pyproject.toml").read_text(), re.M)
    assert found
    return found.group(1)


def prepare_source(s: Scratch) -> None:
    """The source system as it is before Tunggal: a database, its tables' owner, a row. Then
    the DBA runs the README's SQL for PostgreSQL sources."""
    s.source.create_database("e_planning")
    dsn = s.source.dsn("e_planning")
    sql(dsn, "CREATE ROLE app_owner")
    sql(dsn, "CREATE TABLE public.rencana (id bigint PRIMARY KEY, judul text)")
    sql(dsn, "ALTER TABLE public.rencana OWNER TO app_owner")
    sql(dsn, "INSERT INTO public.rencana VALUES (1, 'lama')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(readme_postgres_sql())  # type: ignore[arg-type]


def target_rows(s: Scratch) -> list[tuple[object, ...]]:
    return sql(
        s.target.dsn("basis_data_tunggal"), "SELECT id, judul FROM public.rencana ORDER BY id"
    )


def test_the_guide_deploys_streams_and_upgrades(scratch: Scratch) -> None:
    s = scratch
    prepare_source(s)
    s.release = version_of(s.checkout)

    s.run_section("The target database")
    s.run_section("The service user")
    s.run_section("Install")
    # The release compiled itself in place where these machines' gcc is found (all of them).
    version = subprocess.run(
        [str(s.moved(f"/opt/tunggal/{s.release}") / "bin" / "tunggal"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    expected_build = "compiled with mypyc" if shutil.which("gcc") else "pure Python"
    assert version.startswith(f"tunggal {s.release} ({expected_build}"), version
    s.run_section("The files in /etc/tunggal")
    # The test's own: the machine's port 9464 may be another test's.
    with open(s.moved("/etc/tunggal/env"), "a") as env:
        env.write(f"TUNGGAL_METRICS__PORT='{s.metrics_port}'\n")

    # The layout, with the modes the guide's table gives.
    etc = s.moved("/etc/tunggal")
    expected = {
        etc: 0o750,
        etc / "connectors": 0o750,
        etc / "mappings": 0o750,
        etc / "tunggal.yaml": 0o640,
        etc / "env": 0o640,
        etc / "connectors" / "e_planning.yaml": 0o640,
        etc / "mappings" / "e_planning.yaml": 0o640,
        s.moved("/var/lib/tunggal"): 0o750,
        s.moved("/usr/local/sbin/tunggal"): 0o755,
    }
    for path, mode in expected.items():
        assert path.exists(), path
        assert path.stat().st_mode & 0o7777 == mode, f"{path}: {oct(path.stat().st_mode)}"
    if AS_ROOT:
        import grp
        import pwd

        for path in (
            etc,
            etc / "env",
            etc / "tunggal.yaml",
            etc / "connectors" / "e_planning.yaml",
        ):
            owner = pwd.getpwuid(path.stat().st_uid).pw_name
            group = grp.getgrgid(path.stat().st_gid).gr_name
            assert (owner, group) == ("root", "tunggal"), f"{path}: {owner}:{group}"
        state = s.moved("/var/lib/tunggal").stat()
        assert pwd.getpwuid(state.st_uid).pw_name == "tunggal"
    current = s.moved("/opt/tunggal/current")
    assert current.is_symlink() and os.readlink(current) == s.release

    # The env file means the same to systemd as to the shell of the `tunggal` command.
    env_file = s.moved("/etc/tunggal/env")
    shell = subprocess.run(
        ["sh", "-c", f'set -a; . "{env_file}"; env -0'], capture_output=True, check=True
    ).stdout.decode()
    from_shell = dict(item.split("=", 1) for item in shell.split("\0") if "=" in item)
    for key, value in systemd_env(env_file).items():
        assert from_shell.get(key) == value, key

    s.run_section("The systemd unit")
    unit = unit_settings(s.moved("/etc/systemd/system/tunggal.service"))
    assert unit["User"] == "tunggal" and unit["WorkingDirectory"] == "/etc/tunggal"
    assert unit["EnvironmentFile"].lstrip("-") == "/etc/tunggal/env"
    assert unit["ExecStart"].startswith("/opt/tunggal/current/bin/tunggal run --config ")
    assert unit["StateDirectory"] == "tunggal"  # /var/lib/tunggal, the config's state_dir

    # The first day: validate, schema, schema --apply, validate --db; then the service.
    out = s.run_section("The first day")
    assert "ok: 1 mapping file(s), 1 target table(s)" in out, out
    assert "applied " in out, out
    tables = sql(
        s.target.dsn("basis_data_tunggal"),
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    assert {"rencana", "tunggal_progress"} <= {t[0] for t in tables}
    assert "e_planning" in out  # `tunggal status`, from the running daemon
    if AS_ROOT:
        import pwd

        with open(f"/proc/{s.daemon.pid}/status") as status:  # type: ignore[union-attr]
            uid = next(line.split()[1] for line in status if line.startswith("Uid:"))
        assert int(uid) == pwd.getpwnam("tunggal").pw_uid

    # It streams: the snapshot's row, then a change made now.
    sql(s.source.dsn("e_planning"), "INSERT INTO public.rencana VALUES (2, 'baru')")
    wait_until(
        lambda: target_rows(s) == [(1, "lama"), (2, "baru")],
        timeout=90,
        message="rows 1 and 2 in the target",
        context=lambda: s.journal()[-3000:],
    )

    out = s.run_section("Daily checks")
    assert "e_planning" in out

    # Upgrade to a newer version of the same code, while it streams.
    offsets = s.moved("/var/lib/tunggal/e_planning.offsets")
    assert offsets.exists()
    assert offsets.stat().st_mode & 0o777 == 0o600, "the unit's UMask keeps state private"
    old = s.release
    pyproject = s.checkout / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(f'version = "{old}"', f'version = "{old}.post1"')
    )
    s.release = version_of(s.checkout)
    build = next(b for b in section_blocks("Install") if "pip wheel" in b.text)
    s.sh(build.text, "building the new wheel")
    s.run_section("Upgrade")
    new_python = s.moved("/opt/tunggal/current/bin/python")
    version = subprocess.run(
        [str(new_python), "-c", "import importlib.metadata as m; print(m.version('tunggal'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == s.release != old
    sql(s.source.dsn("e_planning"), "INSERT INTO public.rencana VALUES (3, 'sesudah')")
    wait_until(
        lambda: target_rows(s) == [(1, "lama"), (2, "baru"), (3, "sesudah")],
        timeout=90,
        message="row 3 after the upgrade",
        context=lambda: s.journal()[-3000:],
    )
    # It resumed from its offsets: nothing was read again by a snapshot.
    assert offsets.exists()
    snapshot_reads = [
        line
        for line in s.metrics().splitlines()
        if line.startswith("tunggal_events_total{") and 'op="r"' in line
    ]
    assert not snapshot_reads, snapshot_reads
    s.stop()
