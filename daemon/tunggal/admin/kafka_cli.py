"""`tunggal kafka offsets show|reset`: wires click to admin.kafka_offsets."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from tunggal.admin.kafka_offsets import (
    OffsetsRefused,
    PartitionOffsets,
    parse_to,
    plan_reset,
    read_offsets,
)
from tunggal.admin.output import Grid, show
from tunggal.cliutil import CONFIG_OPTION, _guard

SOURCE_OPTION = click.option("--source", required=True, help="The Kafka source's name.")
TOPIC_OPTION = click.option("--topic", default=None, help="Only this topic of the source.")


def _refuse(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


def _cell(n: int | None) -> str:
    return "-" if n is None else str(n)


@click.group("kafka")
def kafka_group() -> None:
    """Kafka sources (engine: kafka)."""


@kafka_group.group("offsets")
def offsets_group() -> None:
    """The offsets each partition resumes from, stored in the target with the rows."""


@offsets_group.command("show")
@CONFIG_OPTION
@SOURCE_OPTION
@TOPIC_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_guard
def show_command(config_path: Path, source: str, topic: str | None, as_json: bool) -> None:
    """Per partition: the stored offset, the broker's beginning and end (asked now), the lag."""
    from tunggal.config import load_config

    try:
        found = read_offsets(load_config(config_path), source, topic)
    except OffsetsRefused as exc:
        _refuse(str(exc))
        return
    if as_json:
        payload = {"group": found.group, "partitions": [p.as_dict() for p in found.partitions]}
        click.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return
    grid = Grid(["topic", "partition", "stored", "beginning", "end", "lag"])
    for p in found.partitions:
        numbers = (p.stored, p.beginning, p.end, p.lag)
        grid.add([p.topic, str(p.partition), *(_cell(n) for n in numbers)])
    notes: list[tuple[str, str | None]] = [(f"consumer group {found.group}", None)]
    if not found.partitions:
        notes.append(("no partitions: neither the broker nor the target has any", "yellow"))
    show(grid, notes=notes)


def _describe(part: PartitionOffsets, new: int) -> str:
    return f"{part.topic}[{part.partition}]: {_cell(part.stored)} -> {new}"


@offsets_group.command("reset")
@CONFIG_OPTION
@SOURCE_OPTION
@TOPIC_OPTION
@click.option("--to", "to_text", required=True, help="earliest, latest or an offset.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_guard
def reset_command(
    config_path: Path, source: str, topic: str | None, to_text: str, yes: bool
) -> None:
    """Set where the source's partitions resume (stop every instance of the source first)."""
    from tunggal.config import load_config
    from tunggal.sink.kafka_offsets import GroupRunning, group_running, write_offsets

    config = load_config(config_path)
    try:
        to = parse_to(to_text)
        found = read_offsets(config, source, topic)
        plan = plan_reset(found.partitions, to)
    except OffsetsRefused as exc:
        _refuse(str(exc))
        return
    running = (
        f"source {source} is running (consumer group {found.group}): stop every instance first"
    )
    if group_running(config.target.dsn, found.group):
        _refuse(running)
    if not plan:
        _refuse(f"source {source} has no partitions on the broker to reset")
    changes = [p for p in found.partitions if (p.topic, p.partition) in plan]
    for part in changes:
        click.echo(_describe(part, plan[(part.topic, part.partition)]))
    if not yes and not click.confirm(
        f"write these {len(plan)} offset(s) to the target for {found.group}?", default=False
    ):
        click.echo("not reset")
        sys.exit(1)
    try:
        write_offsets(config.target.dsn, found.group, plan)
    except GroupRunning:
        _refuse(running)
    click.echo(f"reset {len(plan)} partition(s) of {found.group}")
