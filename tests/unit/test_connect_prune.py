"""Which connectors on a Kafka Connect worker `connectors apply --prune` deletes."""

from __future__ import annotations

from tunggal.connect.prune import MARKER, deployment, to_prune

OURS = deployment("postgresql://tunggal:rahasia@target.pemkot:5433/sinkron")


def test_the_marker_names_the_target_database_and_never_its_password() -> None:
    assert OURS == "target.pemkot:5433/sinkron"
    assert deployment("host=db dbname=sinkron user=t password=rahasia") == "db:5432/sinkron"


def test_only_this_deployments_connectors_whose_source_is_gone_are_pruned() -> None:
    on_connect = {
        "kepegawaian": {MARKER: OURS},  # still configured: kept
        "aset_lama": {MARKER: OURS},  # ours, source removed: pruned
        "arsip": {MARKER: OURS},  # ours, source removed: pruned
        "tim_lain": {"connector.class": "io.debezium.connector.postgresql.PostgresConnector"},
        "tunggal_lain": {MARKER: "other.pemkot:5432/sinkron"},  # another deployment's
    }
    assert to_prune(on_connect, {"kepegawaian", "keuangan"}, OURS) == ["arsip", "aset_lama"]


def test_nothing_is_pruned_from_a_worker_without_our_connectors() -> None:
    assert to_prune({"tim_lain": {}}, set(), OURS) == []
