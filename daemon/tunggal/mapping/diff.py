"""What a mapping change does to the target: tables and columns added, removed or changed.

Pure: it compares two loaded `MappingSet`s. A target table can have several writers (one per
source table that lands in it), so rules are compared writer by writer, a writer being the
pair (source, source table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from tunggal.mapping.engine import MappingSet, iter_tables
from tunggal.mapping.spec import ColumnSpec, TableMapping
from tunggal.mapping.survivorship import Latest, MergeRules

Kind = Literal["added", "removed", "changed"]
# Table-level rules compared per writer; `columns` is compared column by column.
_TABLE_RULES: Final = ("delete", "soft_delete_column", "truncate", "filter")


@dataclass(frozen=True)
class ColumnChange:
    column: str
    kind: Kind
    writer: str  # "source schema.table"
    old: str | None
    new: str | None


@dataclass
class TableChange:
    table: str
    kind: Kind
    shared: bool = False  # more than one writer, before or after: columns name theirs
    # Human lines for the table as a whole: key, writers added/removed, delete policy, filter.
    details: list[str] = field(default_factory=list)
    columns: list[ColumnChange] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "kind": self.kind,
            "shared": self.shared,
            "details": self.details,
            "columns": [c.__dict__ for c in self.columns],
        }


Writers = dict[str, TableMapping]  # "source schema.table" -> its rules for one target


def _writers(mappings: MappingSet) -> dict[str, Writers]:
    found: dict[str, Writers] = {}
    for doc, _, table in iter_tables(mappings.documents):
        found.setdefault(table.target, {})[f"{doc.spec.source} {table.source_table}"] = table
    return found


def describe(value: str | ColumnSpec) -> str:
    """A column rule as compact flow YAML-ish text, equal for equal rules: `from: kode`."""
    if isinstance(value, str):
        return f"from: {value}"
    data = value.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return ", ".join(f"{k}: {_compact(v)}" for k, v in data.items())


def _compact(value: Any) -> str:
    """YAML flow style, as admins write it: [trim, upper], {"1": AKTIF}."""
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_compact(k)}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and value and not any(c in value for c in ",:{}[]\"'#"):
        return value
    return orjson.dumps(value).decode()


def _rule(table: TableMapping, name: str) -> str:
    value = getattr(table, name)
    return "-" if value is None else str(value)


def diff(old: MappingSet, new: MappingSet) -> list[TableChange]:
    """Changes from `old` to `new`, by target table name; empty when they map alike."""
    before, after = _writers(old), _writers(new)
    old_targets, new_targets = old.targets(), new.targets()
    changes: list[TableChange] = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            change = TableChange(name, "added", len(after[name]) > 1)
            change.details.append(f"key: [{', '.join(new_targets[name].key)}]")
            if new_targets[name].multi_source:
                change.details.extend(_rule_lines(new_targets[name].merge))
            for writer, table in after[name].items():
                change.details.append(f"written by {writer}")
                change.columns.extend(_columns(writer, {}, table.columns))
            changes.append(change)
            continue
        if name not in after:
            change = TableChange(name, "removed")
            for writer in before[name]:
                change.details.append(f"was written by {writer}")
            changes.append(change)
            continue
        change = TableChange(name, "changed", len(before[name]) > 1 or len(after[name]) > 1)
        old_key, new_key = old_targets[name].key, new_targets[name].key
        if old_key != new_key:
            change.details.append(f"key: [{', '.join(old_key)}] -> [{', '.join(new_key)}]")
        change.details.extend(_merge_changes(old_targets[name].merge, new_targets[name].merge))
        for writer in sorted(before[name].keys() | after[name].keys()):
            was, now = before[name].get(writer), after[name].get(writer)
            if was is None and now is not None:
                change.details.append(f"now also written by {writer}")
                change.columns.extend(_columns(writer, {}, now.columns))
            elif now is None and was is not None:
                change.details.append(f"no longer written by {writer}")
                change.columns.extend(_columns(writer, was.columns, {}))
            elif was is not None and now is not None:
                for rule in _TABLE_RULES:
                    if _rule(was, rule) != _rule(now, rule):
                        change.details.append(
                            f"{writer}: {rule}: {_rule(was, rule)} -> {_rule(now, rule)}"
                        )
                change.columns.extend(_columns(writer, was.columns, now.columns))
        if change.details or change.columns:
            changes.append(change)
    return changes


def _rule_lines(rules: MergeRules) -> list[str]:
    """A merged table's rules, one line per column that is not `latest`."""
    lines = [f"merged from {', '.join(rules.sources)}"]
    lines += [
        f"merge {column}: {rule.describe()}"
        for column, rule in rules.columns.items()
        if not isinstance(rule, Latest)
    ]
    others = [c for c, r in rules.columns.items() if isinstance(r, Latest)]
    if others:
        lines.append(f"merge {', '.join(others)}: latest")
    if rules.deleted_by:
        lines.append(f"merge deleted_by: [{', '.join(sorted(rules.deleted_by))}]")
    return lines


def _merge_changes(old: MergeRules, new: MergeRules) -> list[str]:
    """What changes in how a table's sources make its rows (the daemon then recomputes it)."""
    if not old.multi_source and not new.multi_source:
        return []
    if not old.multi_source:
        return _rule_lines(new)
    if not new.multi_source:
        return [f"no longer merged: {', '.join(new.sources)} alone writes it"]
    lines = []
    for column in [*old.columns, *(c for c in new.columns if c not in old.columns)]:
        was = old.columns[column].describe() if column in old.columns else "-"
        now = new.columns[column].describe() if column in new.columns else "-"
        if was != now:
            lines.append(f"merge {column}: {was} -> {now}")
    if old.deleted_by != new.deleted_by:
        lines.append(
            f"merge deleted_by: [{', '.join(sorted(old.deleted_by))}] -> "
            f"[{', '.join(sorted(new.deleted_by))}]"
        )
    return lines


def _columns(
    writer: str,
    old: Mapping[str, str | ColumnSpec],
    new: Mapping[str, str | ColumnSpec],
) -> list[ColumnChange]:
    out = []
    for column in [*old, *(c for c in new if c not in old)]:
        was = describe(old[column]) if column in old else None
        now = describe(new[column]) if column in new else None
        if was == now:
            continue
        kind: Kind = "added" if was is None else "removed" if now is None else "changed"
        out.append(ColumnChange(column, kind, writer, was, now))
    return out


def render(changes: list[TableChange]) -> list[tuple[str, str | None]]:
    """Lines with a rich style each: + added (green), - removed (red), ~ changed (yellow)."""
    marks = {"added": ("+", "green"), "removed": ("-", "red"), "changed": ("~", "yellow")}
    lines: list[tuple[str, str | None]] = []
    for change in changes:
        mark, style = marks[change.kind]
        lines.append((f"{mark} table {change.table}", f"bold {style}"))
        lines.extend((f"    {detail}", None) for detail in change.details)
        for column in change.columns:
            cmark, cstyle = marks[column.kind]
            # With one writer the writer is obvious; with several, say whose rule it is.
            who = f" ({column.writer})" if change.shared else ""
            if column.kind == "changed":
                text = f"{column.column}{who}: {column.old}  ->  {column.new}"
            else:
                text = f"{column.column}{who}: {column.new or column.old}"
            lines.append((f"  {cmark} column {text}", cstyle))
    return lines
