"""The WAL-retention thresholds (slots: in tunggal.yaml) and the slot metrics of a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tunggal.config import SlotsConfig, load_config
from tunggal.errors import ConfigError
from tunggal.metrics import Metrics, ServerSlots, SlotState

GIB = 1024**3


def test_the_default_threshold_is_half_of_max_slot_wal_keep_size() -> None:
    assert SlotsConfig().warn_bytes(8 * GIB) == 4 * GIB
    assert SlotsConfig(warn_fraction=0.8).warn_bytes(10 * GIB) == 8 * GIB


def test_an_unlimited_server_gets_the_fixed_default() -> None:
    assert SlotsConfig().warn_bytes(None) == 10 * GIB
    assert SlotsConfig(warn_retained_wal_unlimited="2GiB").warn_bytes(None) == 2 * GIB  # type: ignore[arg-type]


def test_a_fixed_threshold_wins() -> None:
    fixed = SlotsConfig(warn_retained_wal="1GiB")  # type: ignore[arg-type]
    assert fixed.warn_bytes(100 * GIB) == GIB and fixed.warn_bytes(None) == GIB


def test_the_settings_are_read_from_tunggal_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tunggal.yaml"
    path.write_text(
        "target: {dsn: postgresql://x@h/db}\nmappings: []\n"
        "slots: {warn_retained_wal: 20GiB, interval_s: 10}\n"
    )
    config = load_config(path, environ={})
    assert config.slots.warn_bytes(None) == 20 * GIB and config.slots.interval_s == 10
    path.write_text("target: {dsn: postgresql://x@h/db}\nmappings: []\nslots: {warn_fraction: 2}\n")
    with pytest.raises(ConfigError, match="warn_fraction"):
        load_config(path, environ={})


def test_orphans_and_thresholds_are_exported_per_server() -> None:
    m = Metrics()
    m.set_server_slots(
        "db1:5432",
        ServerSlots(
            (
                SlotState("tunggal_simda", "simda", True, 1000.0, "simda"),
                SlotState("tunggal_lama", "simda", False, 5e9, None),
            ),
            4 * GIB,
            8 * GIB,
        ),
    )
    text = generate_latest(m.registry).decode()
    assert (
        'tunggal_replication_slot_retained_wal_bytes{database="simda",orphan="true",'
        'server="db1:5432",slot="tunggal_lama",source=""} 5e+09'
    ) in text
    assert 'slot="tunggal_simda",source="simda"} 1.0' in text  # active
    assert 'tunggal_replication_slot_warn_bytes{server="db1:5432"} 4.294967296e+09' in text
    assert 'tunggal_replication_slot_server_readable{server="db1:5432"} 1.0' in text

    # Unreadable: the slots are left out (no stale values), the threshold stays.
    m.set_server_slots("db1:5432", ServerSlots(None, 10 * GIB, None))
    text = generate_latest(m.registry).decode()
    assert "tunggal_lama" not in text
    assert 'tunggal_replication_slot_warn_bytes{server="db1:5432"} 4.294967296e+09' in text
    assert 'tunggal_replication_slot_server_readable{server="db1:5432"} 0.0' in text
