"""sd_notify(3) without libsystemd: READY=1, STOPPING=1 and WATCHDOG=1 datagrams.

Written by hand because the protocol is one datagram on a unix socket and the PyPI packages
for it are unmaintained. Every call is a no-op when systemd did not ask (no NOTIFY_SOCKET).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress

from tunggal.metrics import TargetState


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        watchdog = bool(usec) and (not pid or pid == str(os.getpid()))
        # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if watchdog and usec else None
        self._last_ping = 0.0

    def notify(self, state: str) -> None:
        if self.address is None:
            return
        # If systemd went away there is nothing useful to do about it here.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, suppress(OSError):
            sock.sendto(state.encode(), self.address)

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self, now: float | None = None) -> None:
        """Called from the main loop: if the loop hangs, the pings stop and systemd acts."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic() if now is None else now
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")


def status_line(target: TargetState, states: Mapping[str, str], paused: Sequence[str]) -> str:
    """The STATUS= text `systemctl status` shows: what streams, or that the target is down
    since when and why, then any paused source. Worked example:
    "target down since 10:42:07: connection refused; source sipkd paused: public.sp2d fails
    (MappingError)"."""
    if not target.up:
        since = target.down_since
        at = dt.datetime.fromtimestamp(since).strftime("%H:%M:%S") if since else "?"
        text = f"target down since {at}: {target.error}"
    else:
        parts = [f"{name} {state}" for name, state in states.items() if state != "streaming"]
        streaming = [name for name, state in states.items() if state == "streaming"]
        if streaming:
            parts.insert(0, "streaming " + ", ".join(streaming))
        text = "; ".join(parts) or "running"
    return "; ".join([text, *paused])
