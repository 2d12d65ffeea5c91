"""Which connectors on a Kafka Connect worker are Tunggal's, and which of those `connectors
apply --prune` deletes. Pure: no I/O.

A Connect worker may run other teams' connectors, and other Tunggal deployments' too. Every
connector `connectors apply` writes carries MARKER, whose value names the deployment by its
target database (host:port/dbname, never the password). Only a connector with this
deployment's marker and no source in tunggal.yaml is pruned; anything else, an unmarked
connector included, is never touched.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from psycopg.conninfo import conninfo_to_dict

MARKER = "tunggal.target"


def deployment(target_dsn: str) -> str:
    """The marker's value: the target database the connectors' events end up in."""
    parts = conninfo_to_dict(target_dsn)
    host = str(parts.get("host") or "localhost")
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def to_prune(
    on_connect: Mapping[str, Mapping[str, str]], configured: Collection[str], ours: str
) -> list[str]:
    """The connectors (name -> config on Connect) that this deployment made and whose source
    is gone from its config, sorted."""
    return sorted(
        name
        for name, config in on_connect.items()
        if config.get(MARKER) == ours and name not in configured
    )
