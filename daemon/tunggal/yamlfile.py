"""YAML loading that remembers where every value was, so errors can name the line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from tunggal.errors import ConfigError, Problem


def _walk(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = (
                yaml.safe_load(yaml.serialize(key_node))
                if not isinstance(key_node, yaml.ScalarNode)
                else key_node.value
            )
            child = f"{path}.{key}" if path else str(key)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, f"{path}[{i}]", lines) for i, item in enumerate(node.value)]
    return None


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[str, int]]:
    """Parse `path`; return the data and a map from dotted location to 1-based line."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    return data, lines


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The closest valid name, for "did you mean ...?" hints."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def syntax_problem(file: str, exc: yaml.YAMLError) -> Problem:
    """A YAML syntax error as one line naming the file, the line and the column.

    PyYAML's own text names the stream it was given ("<unicode string>") rather than the file,
    so the message is built from its parts.
    """
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(file, "", f"YAML error: {exc}")
    mark = exc.problem_mark or exc.context_mark
    message = f"YAML syntax error: {exc.problem or exc.context}"
    if mark is not None:
        message += f" (column {mark.column + 1})"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f", {exc.context} at line {exc.context_mark.line + 1}"
    return Problem(
        file,
        "",
        message,
        None if mark is None else mark.line + 1,
        "check the indentation, colons and brackets around here; indent with spaces, not tabs",
    )


def load_settings_file(path: Path, what: str) -> tuple[dict[str, Any], dict[str, int]]:
    """A YAML file whose top level must be a mapping (the config, a connector), with the
    line of every key; unreadable files and syntax errors become one located ConfigError."""
    file = str(path)
    try:
        data, lines = load_yaml_with_lines(path)
    except OSError as exc:
        raise ConfigError([Problem(file, "", f"cannot read {what}: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([syntax_problem(file, exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", f"expected a mapping at the top level of the {what}")])
    return data, lines
