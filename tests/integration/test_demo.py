"""`make demo` runs `tunggal demo`: it must show rows flowing from all four systems."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tunggal.demo.data import SYSTEMS

pytestmark = pytest.mark.integration


def test_demo_shows_rows_from_every_system() -> None:
    result = run_cli("demo", "--duration", "25", "--rate", "40", timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    final = result.stdout.rsplit("Tunggal demo", 1)[-1]
    for system in SYSTEMS:
        assert system in final, final
    assert "streaming" in final
    assert "daemon stopped (exit 0)" in result.stdout
    assert "end-to-end lag: p50" in result.stdout
