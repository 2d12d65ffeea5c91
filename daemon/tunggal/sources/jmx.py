"""Debezium's snapshot progress and the JVM heap, read from the JVM's platform MBean server.

Debezium registers one snapshot MBean per connector, for PostgreSQL

    debezium.postgres:type=connector-metrics,context=snapshot,server=<topic.prefix>

(MySQL: `debezium.mysql`, SQL Server adds `task=0,database=...`), with TotalTableCount,
RemainingTableCount, SnapshotRunning, SnapshotCompleted, SnapshotAborted,
SnapshotDurationInSeconds and RowsScanned, a TabularData of {key: "public.kv", value: 500}
rows. The names were checked by listing the MBeans of a real Debezium 3.6 run.

Every JPype call of the daemon stays in `sources/`: the poller thread here reads the MBeans
every few seconds and hands plain Python values to `Metrics`, so neither the main loop nor a
scrape ever waits on the JVM.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from tunggal.metrics import Metrics, SnapshotProgress
from tunggal.sources.embedded import jvm_running

log = logging.getLogger(__name__)


def read_snapshot(server: str) -> SnapshotProgress | None:
    """The snapshot MBean of the connector with topic prefix `server`, or None before the
    connector registered it (or after it stopped)."""
    import jpype

    factory = jpype.JClass("java.lang.management.ManagementFactory")
    object_name = jpype.JClass("javax.management.ObjectName")
    mbs = factory.getPlatformMBeanServer()
    # Topic prefixes hold only [A-Za-z0-9._-], none of them special in an ObjectName.
    pattern = object_name(f"debezium.*:type=connector-metrics,context=snapshot,server={server},*")
    names = list(mbs.queryNames(pattern, None))
    if not names:
        return None
    name = names[0]

    def attr(attribute: str) -> Any:
        return mbs.getAttribute(name, attribute)

    rows: dict[str, int] = {}
    for row in attr("RowsScanned").values():
        rows[str(row.get("key"))] = int(row.get("value"))
    duration = attr("SnapshotDurationInSeconds")
    return SnapshotProgress(
        running=bool(attr("SnapshotRunning")),
        completed=bool(attr("SnapshotCompleted")),
        aborted=bool(attr("SnapshotAborted")),
        tables_total=int(attr("TotalTableCount")),
        tables_remaining=int(attr("RemainingTableCount")),
        rows_scanned=rows,
        duration_s=float(duration) if duration is not None else None,
    )


def read_heap() -> tuple[int, int]:
    """(used, max) bytes of the JVM heap; max is -1 when undefined."""
    import jpype

    usage = (
        jpype.JClass("java.lang.management.ManagementFactory")
        .getMemoryMXBean()
        .getHeapMemoryUsage()
    )
    return int(usage.getUsed()), int(usage.getMax())


class JvmProbe:
    """A daemon thread that copies snapshot progress and heap use into `metrics` every
    `interval_s` (≥ 5 s: reading MBeans is cheap, but nobody needs it faster).

    `servers` maps source name -> Debezium topic prefix. Nothing is read before this process
    started its JVM; a failed reading is logged at debug and exported as absent.
    """

    def __init__(
        self,
        metrics: Metrics,
        servers: Mapping[str, str],
        stop: threading.Event,
        interval_s: float = 5.0,
    ) -> None:
        self.metrics = metrics
        self.servers = dict(servers)
        self.stop = stop
        self.interval_s = max(5.0, interval_s)
        self._thread = threading.Thread(target=self._loop, name="tunggal-jvm-probe", daemon=True)

    def start(self) -> JvmProbe:
        self._thread.start()
        return self

    def _loop(self) -> None:
        attached = False
        # First reading soon after the JVM starts, then on the slow timer.
        wait = 1.0
        while not self.stop.wait(wait):
            if not jvm_running():
                continue
            if not attached:
                attached = _attach_as_daemon()
            self.poll_once()
            wait = self.interval_s

    def poll_once(self) -> None:
        try:
            self.metrics.set_jvm_heap(*read_heap())
        except Exception as exc:
            log.debug("cannot read the JVM heap: %s", exc)
            self.metrics.set_jvm_heap(None, None)
        for source, server in self.servers.items():
            try:
                progress = read_snapshot(server)
            except Exception as exc:
                log.debug("cannot read the snapshot MBean of %s: %s", source, exc)
                progress = None
            if progress is not None or source not in self.metrics.probes.snapshots:
                # A restarting engine unregisters its MBean for a moment: keep the last
                # reading rather than flicker the snapshot metrics away.
                self.metrics.set_snapshot(source, progress)


def _attach_as_daemon() -> bool:
    """A Python thread calling into Java is attached to the JVM; as a daemon thread it never
    holds the JVM's shutdown up."""
    try:
        import jpype

        jpype.java.lang.Thread.attachAsDaemon()
    except Exception as exc:
        log.debug("cannot attach the probe thread as a JVM daemon thread: %s", exc)
    return True
