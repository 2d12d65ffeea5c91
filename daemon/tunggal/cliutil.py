"""What every `tunggal` command shares: the --config option and how errors end a command."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from tunggal.errors import ConfigError, TunggalError

CONFIG_OPTION = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="tunggal.yaml",
    show_default=True,
    envvar="TUNGGAL_CONFIG",
    help="The daemon's configuration file.",
)


def _fail(exc: TunggalError) -> NoReturn:
    """Config problems are listed for the admin, without a traceback."""
    if isinstance(exc, ConfigError):
        click.secho(exc.render(), fg="red", err=True)
        sys.exit(2)
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(1)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunggalError as exc:
            _fail(exc)

    return wrapper
