"""Mapping: YAML rules that turn source change events into target row operations.

Pure (no database, Kafka or metrics code): `load_mappings` validates files into a
`MappingSet`, whose `map_event` turns a `ChangeEvent` into `Upsert`/`Delete`/`Truncate`.
"""

from tunggal.mapping.dbinfo import BOOKKEEPING_COLUMNS, TableInfo, check_against_database
from tunggal.mapping.engine import MappingDocument, MappingSet, TargetSpec, Writer
from tunggal.mapping.loader import load_mappings
from tunggal.mapping.ops import Delete, RowOp, Truncate, Upsert
from tunggal.mapping.spec import ColumnSpec, MappingFile, TableMapping, json_schema

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "ColumnSpec",
    "Delete",
    "MappingDocument",
    "MappingFile",
    "MappingSet",
    "RowOp",
    "TableInfo",
    "TableMapping",
    "TargetSpec",
    "Truncate",
    "Upsert",
    "Writer",
    "check_against_database",
    "json_schema",
    "load_mappings",
]
