"""Loads mapping files: YAML with line numbers, validation, one ConfigError listing everything.

Every problem in every file is collected before anything is raised, so an admin fixes a
broken deployment in one round. Each problem names the file, the line, the place in the file
(`tables[1].columns.nama_kegiatan`) and, where we can guess it, the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tunggal.errors import ConfigError, Problem
from tunggal.mapping.engine import (
    MappingDocument,
    MappingSet,
    content_hash,
    effective_type,
    iter_tables,
    line_of,
    location,
)
from tunggal.mapping.spec import (
    FLOW_COMMA_HINT,
    STEP_MODELS,
    TRANSFORM_NAMES,
    CastStep,
    ColumnSpec,
    ConstPart,
    DatePartStep,
    DefaultIfNullStep,
    LookupStep,
    MappingFile,
    MergeSpec,
    OwnerRule,
    PriorityRule,
    TableMapping,
)
from tunggal.yamlfile import suggest, syntax_problem

Loc = tuple[str | int, ...]
LineIndex = dict[tuple[str, ...], int]  # filled while parsing; see engine.Lines


# --- YAML with lines --------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.

    YAML 1.1 also reads yes/no/on/off as booleans, which silently turns a lookup table of
    status codes such as {ON: ..., OFF: ...} into {True: ..., False: ...}.
    """


_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _index(node: yaml.Node, path: Loc, lines: LineIndex, dupes: list[Problem], file: str) -> None:
    """Record the line of every key and list item; report duplicate keys (YAML keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            here = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                dupes.append(
                    Problem(
                        file,
                        location(here),
                        f"duplicate key `{key}` (first at line {seen[key]})",
                        line,
                        "YAML keeps only the last one; remove or rename one of them",
                    )
                )
            seen.setdefault(key, line)
            lines[tuple(map(str, here))] = line
            _index(value_node, here, lines, dupes, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[tuple(map(str, (*path, i)))] = item.start_mark.line + 1
            _index(item, (*path, i), lines, dupes, file)


def _parse(file: str, text: str) -> tuple[Any, LineIndex, list[Problem]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, [Problem(file, "", "the file is empty", 1, _SKELETON)]
        lines: LineIndex = {(): node.start_mark.line + 1}
        problems: list[Problem] = []
        # Index before constructing: construction flattens `<<:` merge keys into the node,
        # and a key overriding a merged one would then look like a duplicate.
        _index(node, (), lines, problems, file)
        return loader.construct_document(node), lines, problems
    except yaml.YAMLError as exc:
        return None, {}, [syntax_problem(file, exc)]
    finally:
        loader.dispose()


_SKELETON: Final = "start with `source: <name>` and `tables:`"


# --- pydantic errors -> problems --------------------------------------------------------------

_TAG_MODELS: Final[dict[str, type[BaseModel]]] = {
    "<spec>": ColumnSpec,
    "<const>": ConstPart,
    "<date_part>": DatePartStep,
    "<lookup>": LookupStep,
    "<default_if_null>": DefaultIfNullStep,
    "<cast>": CastStep,
    "<priority>": PriorityRule,
    "<owner>": OwnerRule,
}
_TYPE_WORDS: Final = {
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "dict_type": "a mapping (key: value lines)",
    "string_type": "text",
    "tuple_type": "a list",
    "list_type": "a list",
    "bool_type": "true or false",
    "int_type": "a whole number",
}
_SHAPE_HINTS: Final = {
    "<spec>": "write `target_column: source_column` or `target_column: {from: source_column, ...}`",
    "<const>": "write a source column name or {const: <value>}",
}


def _is_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part.startswith("<") or part == "[key]")


def _clean(loc: Loc) -> Loc:
    """The error's place in the file: pydantic's union tags and `[key]` markers dropped."""
    return tuple(p for p in loc if not _is_tag(p))


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that validates the mapping at `loc` (a raw pydantic loc, tags included)."""
    if not loc:
        return MappingFile
    if len(loc) == 2 and loc[0] == "tables" and isinstance(loc[1], int):
        return TableMapping
    if len(loc) == 3 and loc[0] == "tables" and loc[2] == "merge":
        return MergeSpec
    last = loc[-1]
    return _TAG_MODELS.get(last) if isinstance(last, str) else None


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _description(loc: Loc) -> str | None:
    """The description of the innermost model field on `loc`, as a hint."""
    for i in range(len(loc) - 1, -1, -1):
        part = loc[i]
        model = _model_at(loc[:i])
        if isinstance(part, str) and model is not None:
            for name, info in model.model_fields.items():
                if part in (name, info.alias):
                    return f"`{part}`: {info.description}" if info.description else None
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _translate(error: ErrorDetails) -> tuple[str, str | None]:
    """(message, hint) for one pydantic error."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    field = next((p for p in reversed(loc) if isinstance(p, str) and not _is_tag(p)), "")
    if kind == "tunggal":
        return str(ctx["message"]), ctx.get("hint")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = _keys(model) if model else []
        if model is ColumnSpec and field in TRANSFORM_NAMES:
            step = field if field not in STEP_MODELS else f"{{{field}: {_short(value)}}}"
            return f"unknown key `{field}`", f"it is a transform step: transform: [{step}]"
        guess = suggest(field, allowed)
        hint = f"did you mean `{guess}`?" if guess else f"allowed keys: {', '.join(allowed)}"
        if re.fullmatch(r"\s*\d+\)", field):  # the "2)" of {type: numeric(18,2)}
            hint = FLOW_COMMA_HINT
        return f"unknown key `{field}`", hint
    if kind == "missing":
        return f"missing required key `{field}`", _description(loc)
    if kind in ("literal_error", "enum"):
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        what = "transform" if loc and loc[-1] == "<name>" else f"value for `{field}`"
        guess = suggest(str(value), expected)
        choices = f"one of {', '.join(expected)}"
        if loc and loc[-1] == "<latest>":
            choices = "a merge rule is latest, {priority: [a, b]} or {owner: a}"
        return f"unknown {what} {value!r}", (f"did you mean {guess!r}? " if guess else "") + choices
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        if isinstance(value, dict) and value:
            name = str(next(iter(value)))
            guess = suggest(name, TRANSFORM_NAMES)
            return f"unknown transform `{name}`", (
                f"did you mean `{guess}`?" if guess else f"transforms: {', '.join(TRANSFORM_NAMES)}"
            )
        return (
            f"a transform step must be a name or a one-key mapping, got {_kind(value)}",
            "e.g. trim, upper, {date_part: month}, {cast: integer}",
        )
    if kind in ("too_short", "too_long"):
        return f"`{field}` must not be empty", _description(loc)
    if kind in _TYPE_WORDS:
        last = loc[-1] if loc else ""
        shape = _SHAPE_HINTS.get(last) if isinstance(last, str) else None
        return f"expected {_TYPE_WORDS[kind]}, got {_kind(value)}", shape or _description(loc)
    return f"{error['msg']} (got {_kind(value)})", _description(loc)


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 20 else text[:17] + "..."


def _validation_problems(file: str, lines: LineIndex, exc: ValidationError) -> list[Problem]:
    errors = exc.errors()
    clean = [_clean(e["loc"]) for e in errors]
    problems: list[Problem] = []
    for error, path in zip(errors, clean, strict=True):
        # pydantic adds "tables should have at least 1 item" when every item failed: noise.
        if error["type"] == "too_short" and any(
            other[: len(path)] == path and other != path for other in clean
        ):
            continue
        # {cnst: 1} gives both "unknown key cnst" and "missing const"; the first says it all.
        if error["type"] == "missing" and any(
            e["type"] == "extra_forbidden"
            and e["loc"][:-1] == error["loc"][:-1]
            and suggest(str(e["loc"][-1]), [str(error["loc"][-1])])
            for e in errors
        ):
            continue
        message, hint = _translate(error)
        problems.append(Problem(file, location(path), message, line_of(lines, *path), hint))
    return problems


# --- checks across keys and files -------------------------------------------------------------


def _table_problems(doc: MappingDocument, index: int, table: TableMapping) -> list[Problem]:
    problems: list[Problem] = []

    def add(path: Loc, message: str, hint: str | None) -> None:
        full = ("tables", index, *path)
        problems.append(Problem(doc.path, location(full), message, doc.line(*full), hint))

    seen: set[str] = set()
    for j, column in enumerate(table.key):
        if column in seen:
            add(("key", j), f"key column `{column}` is listed twice", "list each column once")
        seen.add(column)
        if column not in table.columns:
            guess = suggest(column, table.columns)
            add(
                ("key", j),
                f"key column `{column}` is not mapped",
                f"did you mean `{guess}`?" if guess else f"add `{column}:` under columns",
            )
    soft_column = table.soft_delete_column
    if "soft_delete_column" in table.model_fields_set and table.delete != "soft":
        add(
            ("soft_delete_column",),
            f"soft_delete_column: {soft_column} has no effect with delete: {table.delete}",
            "set delete: soft, or remove soft_delete_column",
        )
    if table.delete == "soft" and soft_column in table.columns:
        add(
            ("columns", soft_column),
            f"`{soft_column}` is the soft_delete_column and also mapped",
            "tunggal sets it on deletes: remove it from columns or pick another soft_delete_column",
        )
    return problems


def _cross_file_problems(
    entries: Sequence[tuple[MappingDocument, int, TableMapping]],
) -> list[Problem]:
    """Duplicate entries, and writers of one target that disagree about it."""
    problems: list[Problem] = []
    pairs: dict[tuple[str, str, str], tuple[MappingDocument, int]] = {}
    first: dict[str, tuple[MappingDocument, int, TableMapping]] = {}
    first_soft: dict[str, tuple[MappingDocument, int, TableMapping]] = {}
    types: dict[tuple[str, str], tuple[str, MappingDocument, int]] = {}

    def at(doc: MappingDocument, *path: str | int) -> str:
        return f"{doc.path}:{doc.line(*path)}"

    def add(doc: MappingDocument, path: Loc, message: str, hint: str) -> None:
        problems.append(Problem(doc.path, location(path), message, doc.line(*path), hint))

    for doc, index, table in entries:
        pair = (doc.spec.source, table.source_table, table.target)
        if pair in pairs:
            other, other_index = pairs[pair]
            add(
                doc,
                ("tables", index, "to"),
                f"{table.source_table} -> {table.target} is mapped twice for source "
                f"{doc.spec.source} (also at {at(other, 'tables', other_index, 'to')})",
                "merge the two entries into one",
            )
        pairs.setdefault(pair, (doc, index))
        if table.target not in first:
            first[table.target] = (doc, index, table)
        else:
            odoc, oindex, other_table = first[table.target]
            if set(table.key) != set(other_table.key):
                add(
                    doc,
                    ("tables", index, "key"),
                    f"key [{', '.join(table.key)}] for {table.target} disagrees with key "
                    f"[{', '.join(other_table.key)}] at {at(odoc, 'tables', oindex, 'key')}",
                    f"every mapping that writes {table.target} must use the same key",
                )
        if table.delete == "soft":
            sdoc, sindex, soft_table = first_soft.setdefault(table.target, (doc, index, table))
            if table.soft_delete_column != soft_table.soft_delete_column:
                add(
                    doc,
                    ("tables", index, "soft_delete_column"),
                    f"soft_delete_column {table.soft_delete_column} for {table.target} "
                    f"disagrees with {soft_table.soft_delete_column} at "
                    f"{at(sdoc, 'tables', sindex)}",
                    "use one soft-delete column per target table",
                )
        for column, value in table.columns.items():
            declared = effective_type(value)
            if declared is None:
                continue
            previous = types.setdefault((table.target, column), (declared, doc, index))
            if previous[0] != declared:
                _, odoc, oindex = previous
                add(
                    doc,
                    ("tables", index, "columns", column),
                    f"{table.target}.{column} is {declared} here but {previous[0]} at "
                    f"{at(odoc, 'tables', oindex, 'columns', column)}",
                    "give the column one type in every file",
                )
    return problems


def _merge_problems(
    entries: Sequence[tuple[MappingDocument, int, TableMapping]],
) -> list[Problem]:
    """Survivorship rules that name sources or columns they cannot, or that leave a source out.

    Checked across files: the rules of one target table name the sources of every file that
    writes it.
    """
    problems: list[Problem] = []
    groups: dict[str, list[tuple[MappingDocument, int, TableMapping]]] = {}
    for entry in entries:
        groups.setdefault(entry[2].target, []).append(entry)
    for target, group in groups.items():
        declared = [(doc, index, table) for doc, index, table in group if table.merge is not None]
        if not declared:
            continue
        first_doc, first_index, first = declared[0]
        for doc, index, _ in declared[1:]:
            path = ("tables", index, "merge")
            problems.append(
                Problem(
                    doc.path,
                    location(path),
                    f"merge rules for {target} are also given at "
                    f"{first_doc.path}:{first_doc.line('tables', first_index, 'merge')}",
                    doc.line(*path),
                    "give a target table's merge rules in one entry only",
                )
            )
        problems.extend(_MergeCheck(target, group, first_doc, first_index, first).problems())
    return problems


class _MergeCheck:
    """The checks of one target table's `merge:` block, each problem at its line."""

    def __init__(
        self,
        target: str,
        group: Sequence[tuple[MappingDocument, int, TableMapping]],
        doc: MappingDocument,
        index: int,
        table: TableMapping,
    ) -> None:
        assert table.merge is not None
        self.target = target
        self.doc = doc
        self.base: Loc = ("tables", index, "merge")
        self.merge = table.merge
        self.key = set(table.key)
        self.maps: dict[str, set[str]] = {}
        for d, _, t in group:
            self.maps.setdefault(d.spec.source, set()).update(t.columns)
        self.sources = sorted(self.maps)
        self.found: list[Problem] = []

    def add(self, path: Loc, message: str, hint: str) -> None:
        full = (*self.base, *path)
        self.found.append(
            Problem(self.doc.path, location(full), message, self.doc.line(*full), hint)
        )

    def problems(self) -> list[Problem]:
        mapped = {c for cols in self.maps.values() for c in cols} - self.key
        governed = sorted(mapped - set(self.merge.columns))  # columns the default decides
        self._rule(self.merge.default, ("default",), governed)
        for column, rule in self.merge.columns.items():
            path: Loc = ("columns", column)
            if column in self.key:
                self.add(
                    path,
                    f"key column {column} takes no merge rule",
                    "every source gives the same key; remove it from merge.columns",
                )
            elif column not in mapped:
                guess = suggest(column, sorted(mapped))
                self.add(
                    path,
                    f"no mapping of {self.target} maps column {column}",
                    f"did you mean `{guess}`?" if guess else f"mapped: {', '.join(sorted(mapped))}",
                )
            else:
                self._rule(rule, path, [column])
        self._sources(self.merge.deleted_by, ("deleted_by",))
        return self.found

    def _rule(self, rule: str | PriorityRule | OwnerRule, path: Loc, columns: list[str]) -> None:
        what = f"{self.target}.{columns[0]}" if len(columns) == 1 else self.target
        if isinstance(rule, PriorityRule):
            if not self._sources(rule.priority, (*path, "priority")):
                return
            missing = [
                s
                for s in self.sources
                if s not in rule.priority and any(c in self.maps[s] for c in columns)
            ]
            if missing:
                verb = "maps" if len(missing) == 1 else "map"
                self.add(
                    (*path, "priority"),
                    f"priority for {what} misses {', '.join(missing)}, which {verb} "
                    + (columns[0] if len(columns) == 1 else "columns of it"),
                    f"list every source that writes it: [{', '.join([*rule.priority, *missing])}]",
                )
        elif isinstance(rule, OwnerRule):
            if not self._sources((rule.owner,), (*path, "owner")):
                return
            unmapped = [c for c in columns if c not in self.maps[rule.owner]]
            if not unmapped:
                return
            if len(columns) == 1:
                holders = [s for s in self.sources if columns[0] in self.maps[s]]
                self.add(
                    (*path, "owner"),
                    f"owner {rule.owner} does not map {what}",
                    f"pick a source that maps it: {', '.join(holders)}",
                )
            else:
                self.add(
                    (*path, "owner"),
                    f"owner {rule.owner} does not map {', '.join(unmapped)} of {self.target}",
                    "give those columns their own rule under merge.columns",
                )

    def _sources(self, names: Sequence[str], path: Loc) -> bool:
        """Whether every name is a source that writes the table, once; else say which is not."""
        ok = True
        seen: set[str] = set()
        for j, name in enumerate(names):
            at: Loc = path if path[-1] == "owner" else (*path, j)
            if name in seen:
                self.add(at, f"source {name} is listed twice", "list each source once")
                ok = False
            seen.add(name)
            if name not in self.maps:
                guess = suggest(name, self.sources)
                self.add(
                    at,
                    f"source {name} does not write {self.target}",
                    f"did you mean `{guess}`?"
                    if guess
                    else f"the sources that write it: {', '.join(self.sources)}",
                )
                ok = False
        return ok


# --- entry point ------------------------------------------------------------------------------


def _expand(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories become their *.yaml and *.yml files."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]))
        else:
            files.append(path)
    return sorted(set(files), key=str)


def load_mappings(paths: Sequence[Path]) -> MappingSet:
    """Load, validate and compile mapping files (or directories of them).

    Raises ConfigError with every problem of every file.
    """
    problems: list[Problem] = []
    documents: list[MappingDocument] = []
    valid: list[tuple[MappingDocument, int, TableMapping]] = []
    raw: dict[str, bytes] = {}
    files = _expand(paths)
    if not files:
        raise ConfigError([Problem("", "", "no mapping files given", None, "pass *.yaml files")])
    for path in files:
        name = str(path)
        try:
            raw[name] = path.read_bytes()
            text = raw[name].decode("utf-8")
        except OSError as exc:
            problems.append(Problem(name, "", f"cannot read: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError as exc:
            problems.append(Problem(name, "", f"not UTF-8 text: {exc.reason}", None))
            continue
        data, lines, found = _parse(name, text)
        problems.extend(found)
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(
                Problem(name, "", f"expected a mapping at the top, got {_kind(data)}", 1, _SKELETON)
            )
            continue
        try:
            spec = MappingFile.model_validate(data)
        except ValidationError as exc:
            problems.extend(_validation_problems(name, lines, exc))
            valid.extend(_valid_tables(name, data, lines))
            continue
        doc = MappingDocument(name, spec, lines)
        documents.append(doc)
        valid.extend(iter_tables([doc]))
    for doc, index, table in valid:
        problems.extend(_table_problems(doc, index, table))
    problems.extend(_cross_file_problems(valid))
    problems.extend(_merge_problems(valid))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.file, p.line or 0)))
    return MappingSet(tuple(documents), content_hash(raw))


def _valid_tables(
    file: str, data: dict[str, Any], lines: LineIndex
) -> list[tuple[MappingDocument, int, TableMapping]]:
    """The tables of a file that failed validation which are valid on their own.

    Checking them too means one broken table does not hide the problems of the others.
    """
    source = data.get("source")
    tables = data.get("tables")
    if not isinstance(source, str) or not isinstance(tables, list):
        return []
    found: list[tuple[MappingDocument, int, TableMapping]] = []
    for index, item in enumerate(tables):
        try:
            table = TableMapping.model_validate(item)
        except ValidationError:
            continue
        # Only for locating problems: `lines` is the whole file's, so `index` still finds them.
        spec = MappingFile.model_construct(source=source, tables=(table,))
        found.append((MappingDocument(file, spec, lines), index, table))
    return found
