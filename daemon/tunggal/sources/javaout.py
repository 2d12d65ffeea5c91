"""Java's console output, through Python's logging.

Debezium logs through log4j, the PostgreSQL JDBC driver through java.util.logging, and some
Java code calls `printStackTrace()` or writes to `System.out`. Left alone, all of it lands on
the terminal (and in the journal) as it is: a failed start printed 20-30 stack frames before
our one line saying what is wrong. Here the JVM's System.out and System.err become a pipe that
a daemon thread reads, and each line becomes a log record:

- a line of our log4j and java.util.logging layouts (`LEVEL<US>logger<US>message`, see
  embedded._LOG4J) keeps its level and is logged as `debezium.<logger>`;
- the lines of a stack trace (the exception line, `at ...`, `Caused by: ...`, `... 12 more`)
  are logged at DEBUG, so they are in the log with `--log-level debug` and nowhere else;
- anything else Java prints is logged at INFO as `java`.

So `--log-format json` covers Java's lines too, and a trace never reaches the terminal at the
default level. The JVM's own native warnings (written to file descriptor 2 by the VM, not by
Java code) are not Java output and are left alone.
"""

from __future__ import annotations

import logging
import os
import re
import threading

SEPARATOR = "\x1f"

_LEVELS = {
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "SEVERE": logging.ERROR,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "INFO": logging.INFO,
    "CONFIG": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "FINE": logging.DEBUG,
    "FINER": logging.DEBUG,
    "FINEST": logging.DEBUG,
    "TRACE": logging.DEBUG,
}
# The lines printStackTrace writes: "java.sql.SQLException: ...", "\tat a.b.C.m(C.java:1)",
# "Caused by: ...", "Suppressed: ...", "\t... 12 more", and "Exception in thread ...".
_TRACE = re.compile(
    r"^\s*(?:at |\.\.\. \d+ (?:more|common frames omitted)|Caused by: |Suppressed: )"
    r"|^Exception in thread "
    r"|^[\w$]+(?:\.[\w$]+)+(?:Exception|Error|Throwable)\b"
)

_routed = False
_java = logging.getLogger("java")


def route_java_output() -> None:
    """Point the JVM's System.out and System.err at a pipe read into Python's logging. Once
    per process, right after the JVM started and before any Java class logs."""
    global _routed
    if _routed:
        return
    import jpype

    read_fd, write_fd = os.pipe()
    system = jpype.JClass("java.lang.System")
    stream = jpype.JClass("java.io.PrintStream")(
        jpype.JClass("java.io.FileOutputStream")(f"/proc/self/fd/{write_fd}"), True, "UTF-8"
    )
    system.setOut(stream)
    system.setErr(stream)
    os.close(write_fd)  # Java holds its own descriptor of the pipe
    threading.Thread(target=_read, args=(read_fd,), name="java-output", daemon=True).start()
    _routed = True


def _read(fd: int) -> None:
    pending = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        log_lines([line.decode("utf-8", "replace") for line in lines])


def log_lines(lines: list[str]) -> None:
    """Log what Java printed; consecutive trace lines become one DEBUG record."""
    trace: list[str] = []
    for line in lines:
        line = line.rstrip("\r")
        if _TRACE.search(line):
            trace.append(line)
            continue
        if trace:
            _java.debug("%s", "\n".join(trace))
            trace = []
        if not line.strip():
            continue
        parts = line.split(SEPARATOR, 2)
        if len(parts) == 3 and parts[0] in _LEVELS:
            level, name, message = parts
            logging.getLogger(f"debezium.{name}").log(_LEVELS[level], "%s", message)
        else:
            _java.info("%s", line)
    if trace:
        _java.debug("%s", "\n".join(trace))
