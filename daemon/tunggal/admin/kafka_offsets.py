"""`tunggal kafka offsets show|reset`: the offsets a Kafka source resumes from, which live in
the target (`tunggal_kafka_offsets`, written with the rows), beside what the broker holds.

Resetting the consumer group's offsets in Kafka changes nothing: on every assignment the
daemon seeks to the target's offsets. So the reset writes the target's table, refused while an
instance of the group runs (see `sink/kafka_offsets.py` for how that is known).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tunggal.config import SourceConfig, TunggalConfig
from tunggal.errors import FatalError

TopicPartition = tuple[str, int]


class OffsetsRefused(Exception):
    """Bad input or a reset that must not happen now: one line, exit code 2."""


@dataclass(frozen=True)
class PartitionOffsets:
    topic: str
    partition: int
    stored: int | None  # the next offset the target holds; None: never consumed
    beginning: int | None  # None: the broker does not have the partition (any more)
    end: int | None

    @property
    def lag(self) -> int | None:
        if self.stored is None or self.end is None:
            return None
        return max(0, self.end - self.stored)

    def as_dict(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "stored": self.stored,
            "beginning": self.beginning,
            "end": self.end,
            "lag": self.lag,
        }


def parse_to(text: str) -> str | int:
    """`earliest`, `latest` or a non-negative offset."""
    if text in ("earliest", "latest"):
        return text
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    raise OffsetsRefused(f"--to {text}: give earliest, latest or an offset (0 or more)")


def plan_reset(partitions: list[PartitionOffsets], to: str | int) -> dict[TopicPartition, int]:
    """The new next offset of every partition the broker has. An explicit offset must lie
    within every partition's [beginning, end]: the first that does not refuses the reset."""
    plan: dict[TopicPartition, int] = {}
    for part in partitions:
        if part.beginning is None or part.end is None:
            continue  # not on the broker: nothing to reset to
        if to == "earliest":
            plan[(part.topic, part.partition)] = part.beginning
        elif to == "latest":
            plan[(part.topic, part.partition)] = part.end
        else:
            assert isinstance(to, int)
            where = f"{part.topic}[{part.partition}]"
            if to > part.end:
                raise OffsetsRefused(f"offset {to} is beyond the end of {where} ({part.end})")
            if to < part.beginning:
                raise OffsetsRefused(
                    f"offset {to} is below the beginning of {where} ({part.beginning})"
                )
            plan[(part.topic, part.partition)] = to
    return plan


def merge(
    stored: dict[TopicPartition, int],
    bounds: dict[TopicPartition, tuple[int, int]],
    wanted: Callable[[str], bool],
) -> list[PartitionOffsets]:
    """One row per partition the broker has or the target remembers, of the wanted topics."""
    keys = sorted({tp for tp in (*stored, *bounds) if wanted(tp[0])})
    rows = []
    for topic, partition in keys:
        low, high = bounds.get((topic, partition), (None, None))
        rows.append(PartitionOffsets(topic, partition, stored.get((topic, partition)), low, high))
    return rows


def kafka_source(config: TunggalConfig, name: str) -> SourceConfig:
    for source in config.sources:
        if source.name == name:
            if source.engine != "kafka":
                raise OffsetsRefused(
                    f"source {name} is not a Kafka source (engine: {source.engine})"
                )
            return source
    known = ", ".join(s.name for s in config.sources if s.engine == "kafka") or "none"
    raise OffsetsRefused(f"no source {name} in {config.file} (Kafka sources: {known})")


def topic_filter(config: TunggalConfig, source: SourceConfig) -> Callable[[str], bool]:
    """The topics the source consumes, as the daemon subscribes to them."""
    if source.topics:
        names = set(source.topics)
        return names.__contains__
    pattern = source.topic_pattern
    if not pattern:
        from tunggal.runtime.app import load_all
        from tunggal.sources.kafka import default_topic_pattern

        mappings, connectors = load_all(config)
        spec = connectors[source.name]
        pattern = default_topic_pattern(
            spec.topic_prefix, mappings.source_tables(source.name), spec.notification_topic
        )
    compiled = re.compile(pattern)
    return lambda topic: compiled.fullmatch(topic) is not None


@dataclass(frozen=True)
class SourceOffsets:
    group: str
    partitions: list[PartitionOffsets]


def read_offsets(config: TunggalConfig, name: str, topic: str | None) -> SourceOffsets:
    """The target's offsets and the broker's bounds (asked now) of the source's topics."""
    from tunggal.sink.kafka_offsets import stored_offsets
    from tunggal.sources.kafka_client_config import scrub
    from tunggal.sources.kafka_clients import ClientError, partition_bounds

    source = kafka_source(config, name)
    assert config.kafka is not None  # a Kafka source needs the kafka: block
    group = f"{config.kafka.group_id}.{source.name}"  # as sources/kafka.py names it
    consumed = topic_filter(config, source)
    if topic is not None and not consumed(topic):
        raise OffsetsRefused(f"source {name} does not consume topic {topic}")

    def wanted(t: str) -> bool:
        return consumed(t) if topic is None else t == topic

    try:
        bounds = partition_bounds(config.kafka, group, wanted)
    except ClientError as exc:
        raise FatalError(f"cannot ask Kafka: {scrub(str(exc), config.kafka)}") from None
    stored = stored_offsets(config.target.dsn, group)
    return SourceOffsets(group, merge(stored, bounds, wanted))
