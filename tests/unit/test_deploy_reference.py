"""docs/deploy.md's connector file reference lists exactly the keys the loader accepts.

The keys are read from the models `load_connector` validates against (`extra="forbid"`, so
these fields are all it takes), nested sections as `section.key`: a key added to the code and
not to the guide, or left in the guide after it is gone, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from tunggal.connectors import ConnectorSpec, load_connector

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
SECTION = "## Connector file reference"


def accepted_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key of `model` as a file spells it: a nested model gives its own key and its keys."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.add(key)
        inner = _model_in(field.annotation)
        if inner is not None:
            keys |= accepted_keys(inner, f"{key}.")
    return keys


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def documented_keys() -> list[str]:
    """The first cell of each row of the reference table, in the order written."""
    text = GUIDE.read_text()
    assert SECTION in text, f"{GUIDE.name} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_reference_lists_exactly_the_keys_the_loader_accepts() -> None:
    documented = documented_keys()
    assert len(documented) == len(set(documented)), f"keys listed twice: {documented}"
    accepted = accepted_keys(ConnectorSpec)
    assert set(documented) - accepted == set(), "documented, but the loader refuses them"
    assert accepted - set(documented) == set(), "accepted by the loader, missing from the guide"


def test_key_derivation_sees_nested_sections() -> None:
    # The comparison above is only as good as this walk: it must reach database.* keys.
    keys = accepted_keys(ConnectorSpec)
    assert {"name", "database", "database.host", "database.password", "properties"} <= keys


def test_a_file_with_every_documented_top_level_key_loads(tmp_path: Path) -> None:
    # The documented names are the spelling the loader takes, not just field names in Python.
    path = tmp_path / "e_planning.yaml"
    path.write_text(
        "name: e_planning\nkind: postgresql\n"
        "database: {host: h, port: 5432, dbname: d, user: u, password: p}\n"
        "tables: [public.rencana]\nsnapshot: initial\nschemas: true\n"
        "signal_table: public.tunggal_signal\ntimezone: Asia/Jakarta\nserver_id: 6000\n"
        "trust_server_certificate: false\nproperties: {poll.interval.ms: '100'}\n"
    )
    spec = load_connector(path)
    top = {k for k in documented_keys() if "." not in k}
    assert top == set(spec.model_fields_set)
