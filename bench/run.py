"""Reproducible benchmark: `python bench/run.py [--events N]` (or `make bench`).

For a narrow table (8 columns) and a wide one (40 columns: numerics, timestamps, jsonb), it
generates N synthetic Debezium change events (70% inserts, 25% updates, some on hot keys, 5%
deletes) and measures on this machine, in one run, against one PostgreSQL:
  - decode+map only (with the target's column types as hints, as `replay` does), no writes;
  - `replay` into PostgreSQL through the real runner, sink and batching;
  - raw COPY of the same final rows into a copy of the table: the physical limit;
  - dlt's merge load (csv loader files, primary key) of the same final rows: the peer.
Then the narrow table written by two sources with overlapping keys and columns (`merged`): each
source's contribution kept, rows recomputed by the merge rules; its `replay` rate is compared
with the single-source one. Then, for the narrow table, the daemon as users run it
(`tunggal run` subprocesses):
  - Kafka -> PostgreSQL from a pre-filled topic on the test broker, 1 and 2 instances
    (bench/kafka_stage.py), and per-row lag at a fixed offered rate through Debezium on
    Kafka Connect;
  - the embedded engine with a no-op handler vs `tunggal run` -> PostgreSQL on a real source
    table change of N rows, and per-row lag at a fixed offered rate (bench/embedded_stage.py);
  - on request (`--pipelines verify`), `tunggal verify` of a table in sync (1,000,000 rows
    unless `--verify-rows`) beside count(*) + md5(string_agg) on both sides
    (bench/verify_stage.py).
With `--pure`, Tunggal's own stages run again on the pure-Python build of the same sources; with
`--baseline REV`, on the package of an earlier commit (an issue's "today"): same events, same run,
each on a database of its own.
Prints tables and writes JSON to bench/results/ so runs can be compared.

A stage is a function `(Case) -> StageResult`, listed in STAGES. Each runs in a fresh spawned
process so that its peak RSS and CPU seconds are its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tunggal.devtools.pgcluster import PgCluster
from tunggal.devtools.synth import NARROW, WIDE, Shape, mixed_workload, narrow_mapping

SHAPES: dict[str, tuple[Shape, str]] = {
    "narrow": (NARROW, "public.kegiatan"),
    "wide": (WIDE, "public.lebar"),
    "merged": (NARROW, "public.kegiatan_gabung"),
}
# The merged table: two systems write it, with overlapping keys (both workloads number their
# rows from 1) and columns. a holds the plan, b the schedule; both give kode and nama.
MERGED_SOURCES = {
    "a": ("id", "kode", "nama", "tahun", "pagu", "tgl_mulai"),
    "b": ("id", "kode", "nama", "diubah", "aktif"),
}
MERGED_RULES = "    merge:\n      columns:\n        nama: {priority: [a, b]}\n"


@dataclass(frozen=True)
class Case:
    """Everything a stage needs, as plain data so that it crosses into a spawned process."""

    shape: str
    table: str  # "public.kegiatan"
    dsn: str
    work: Path  # events.jsonl, mapping.yaml, final.pickle, tunggal.yaml live here
    batch: int = 5000  # batch.max_size for replay

    @property
    def events_file(self) -> Path:
        return self.work / "events.jsonl"

    @property
    def mapping_file(self) -> Path:
        return self.work / "mapping.yaml"

    @property
    def rows_file(self) -> Path:
        return self.work / "final.pickle"


@dataclass
class StageResult:
    stage: str
    count: int
    unit: str  # what count counts: "events" or "rows"
    seconds: float
    cpu_s: float
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    variant: str = ""  # the build's mark, "" for the installed one (see Variant)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


@dataclass
class _Clock:
    seconds: float = 0.0
    cpu_s: float = 0.0


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (dlt may use a process pool)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _peak_rss_mb() -> float:
    # Not ru_maxrss: Linux carries it over from the parent across fork and exec, so every
    # spawned stage would report at least the parent's size.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measured() -> Iterator[_Clock]:
    """Wall and CPU time of the block (CPU: the whole process, all its threads)."""
    clock = _Clock()
    started, cpu = time.perf_counter(), _cpu()
    try:
        yield clock
    finally:
        clock.seconds = time.perf_counter() - started
        clock.cpu_s = _cpu() - cpu


def _final_rows(case: Case) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = pickle.loads(case.rows_file.read_bytes())
    return rows


# -- stages ----------------------------------------------------------------------------------


def decode_map_inputs(case: Case) -> tuple[Any, dict[str, Any], list[Any]]:
    """What decode+map runs on, set up as `replay` does: the pipeline, with the target's column
    types as hints (they turn numeric strings, day counts and µs into typed values), those
    types per target table, and the case's events."""
    from tunggal.config import load_config
    from tunggal.events.model import RawEvent
    from tunggal.runtime.app import load_all, open_sink
    from tunggal.runtime.pipeline import Pipeline
    from tunggal.sources.replay import read_events

    config = load_config(case.work / "tunggal.yaml")
    mappings, _ = load_all(config)
    sink = open_sink(config, mappings, check=False)
    types = {name: info.columns for name, info in sink.introspect().items()}
    sink.close()
    with open(case.events_file, "rb") as stream:
        raws = [r for r in read_events(stream, "bench") if isinstance(r, RawEvent)]
    return Pipeline(mappings, {}, types), types, raws


def stage_decode_map(case: Case) -> StageResult:
    """The runner's CPU work before the sink, as `replay` does it: decoding with the target's
    column types as hints, mapping, and the pipeline's bookkeeping, in chunks of the batch
    size."""
    from tunggal.runtime.gc_tuning import tune_for_throughput

    pipeline, _, raws = decode_map_inputs(case)
    tune_for_throughput()  # as `tunggal run` and `tunggal replay` do
    with measured() as clock:
        for start in range(0, len(raws), case.batch):
            pipeline.process("bench", raws[start : start + case.batch])
    return StageResult("decode+map (no DB writes)", len(raws), "events", clock.seconds, clock.cpu_s)


def stage_replay_pg(case: Case) -> StageResult:
    from tunggal.config import load_config
    from tunggal.metrics import Metrics
    from tunggal.runtime.app import build_runner
    from tunggal.runtime.gc_tuning import tune_for_throughput

    config = load_config(case.work / "tunggal.yaml")
    runner = build_runner(
        config, metrics=Metrics(), stop=threading.Event(), replay=("bench", case.events_file)
    )
    tune_for_throughput()  # as `tunggal replay` does
    with measured() as clock:
        runner.run(until_idle=True)
    return StageResult(
        f"replay -> PostgreSQL (batch {case.batch})",
        runner.totals["events"],
        "events",
        clock.seconds,
        clock.cpu_s,
        extra={"batches": runner.totals["batches"]},
    )


def stage_replay_merged(case: Case) -> StageResult:
    """`replay` of each source's events in turn into the table they both write: every change
    writes its source's contribution, then the rows it touched are recomputed from them."""
    from tunggal.config import load_config
    from tunggal.metrics import Metrics
    from tunggal.runtime.app import build_runner
    from tunggal.runtime.gc_tuning import tune_for_throughput

    config = load_config(case.work / "tunggal.yaml")
    events = batches = 0
    seconds = cpu_s = 0.0
    for source in MERGED_SOURCES:
        runner = build_runner(
            config,
            metrics=Metrics(),
            stop=threading.Event(),
            replay=(source, case.work / f"events-{source}.jsonl"),
        )
        tune_for_throughput()
        with measured() as clock:
            runner.run(until_idle=True)
        events += runner.totals["events"]
        batches += runner.totals["batches"]
        seconds += clock.seconds
        cpu_s += clock.cpu_s
    return StageResult(
        f"replay, 2 sources (batch {case.batch})",
        events,
        "events",
        seconds,
        cpu_s,
        extra={"batches": batches},
    )


def stage_copy_pg(case: Case) -> StageResult:
    """Best of three COPYs, each into a fresh table: one takes only a few tenths of a second,
    so a single run would make every ratio to it swing with the machine's load."""
    shape = SHAPES[case.shape][0]
    rows = _final_rows(case)
    clocks = []
    with psycopg.connect(case.dsn, autocommit=True) as conn:
        for attempt in range(3):
            copy_table = f"{case.table.partition('.')[2]}_copy{attempt}"
            conn.execute(shape.ddl.format(name=copy_table))
            with (
                measured() as clock,
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY {copy_table} ({', '.join(shape.columns)}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            clocks.append(clock)
    best = min(clocks, key=lambda c: c.seconds)
    return StageResult("raw COPY (final rows)", len(rows), "rows", best.seconds, best.cpu_s)


def stage_dlt_merge(case: Case) -> StageResult:
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt

    shape = SHAPES[case.shape][0]
    rows = _final_rows(case)
    name = case.table.partition(".")[2]
    # dlt insists on a password; the throwaway server trusts local connections and ignores it.
    dsn = case.dsn.replace("postgresql://postgres@", "postgresql://postgres:unused@", 1)
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{case.shape}",
        pipelines_dir=str(case.work / "dlt"),
        destination=dlt.destinations.postgres(credentials=dsn),
        dataset_name="dlt_bench",
    )

    @dlt.resource(name=name, write_disposition="merge", primary_key="id")
    def final() -> Iterator[dict[str, Any]]:
        columns = shape.columns
        for row in rows:
            yield dict(zip(columns, row, strict=True))

    # extract, normalize and load: all of dlt's work for the rows, as a user would run it
    with measured() as clock:
        pipeline.run(final(), loader_file_format="csv")
    return StageResult("dlt merge (csv, same rows)", len(rows), "rows", clock.seconds, clock.cpu_s)


STAGES: list[Callable[[Case], StageResult]] = [
    stage_decode_map,
    stage_replay_pg,
    stage_copy_pg,
    stage_dlt_merge,
]
# The merged table is measured against the narrow table's own `replay`, not COPY or dlt.
MERGED_STAGES: list[Callable[[Case], StageResult]] = [stage_replay_merged]


def _in_child(stage: Callable[[Case], StageResult], case: Case) -> StageResult:
    result = stage(case)
    result.peak_rss_mb = _peak_rss_mb()
    return result


@dataclass(frozen=True)
class Variant:
    """A build of Tunggal that the stages run on: the installed one (compiled where it could
    be), its pure-Python form (`--pure`), or the package of an earlier commit (`--baseline`)."""

    key: str  # "", "pure", "baseline": the suffix of the pipelines' keys in the JSON
    mark: str  # after the stage's name in the tables: "", " [pure]", " [ae2e29d]"
    env: tuple[tuple[str, str], ...] = ()
    # Where the earlier commit's package was put: its stages run in a fresh interpreter with
    # it first on PYTHONPATH (multiprocessing's spawn would hand the child this sys.path).
    pythonpath: str | None = None


INSTALLED = Variant("", "", (("TUNGGAL_PURE", ""),))
PURE = Variant("pure", " [pure]", (("TUNGGAL_PURE", "1"),))


def baseline(rev: str, root: Path) -> Variant:
    """The package as it was at `rev` (git), extracted under `root`: pure Python, since an
    earlier commit's sources were never compiled here."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    where = root / "baseline"
    where.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", rev, "daemon"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
        short = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", rev],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise SystemExit(f"bench: --baseline {rev}: {detail.strip() or exc}") from None
    daemon = str(where / "daemon")
    return Variant("baseline", f" [{short}]", (("TUNGGAL_PURE", ""),), pythonpath=daemon)


def run_stage(
    stage: Callable[[Case], StageResult], case: Case, variant: Variant = INSTALLED
) -> StageResult:
    if variant.pythonpath is not None:
        return _run_stage_elsewhere(stage, case, variant)
    with build(variant):
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            result = pool.apply(_in_child, (stage, case))
    result.stage += variant.mark
    result.variant = variant.mark
    return result


CHILD_FLAG = "--stage-child"


def _run_stage_elsewhere(
    stage: Callable[[Case], StageResult], case: Case, variant: Variant
) -> StageResult:
    """The stage in a fresh interpreter that finds `variant`'s package first."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="tunggal-stage-") as tmp:
        job, answer = Path(tmp) / "job.pickle", Path(tmp) / "result.pickle"
        job.write_bytes(pickle.dumps((stage.__name__, case)))
        with build(variant):
            subprocess.run(
                [sys.executable, __file__, CHILD_FLAG, str(job), str(answer)], check=True
            )
        result: StageResult = pickle.loads(answer.read_bytes())
    result.stage += variant.mark
    result.variant = variant.mark
    return result


def _stage_child(job: Path, answer: Path) -> None:
    name, case = pickle.loads(job.read_bytes())
    answer.write_bytes(pickle.dumps(_in_child(globals()[name], case)))


# Tunggal's own stages, the ones `--pure` and `--baseline` measure again on those builds.
TUNGGAL_STAGES = (stage_decode_map, stage_replay_pg, stage_replay_merged)


@contextmanager
def build(variant: Variant) -> Iterator[None]:
    """Processes started in the block (stages, `tunggal run`) run `variant`'s build of the
    per-event path (see tunggal.native for the compiled and pure ones)."""
    changes = dict(variant.env)
    if variant.pythonpath is not None:
        changes["PYTHONPATH"] = os.pathsep.join(
            p for p in (variant.pythonpath, os.environ.get("PYTHONPATH", "")) if p
        )
    before = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


# -- the run -----------------------------------------------------------------------------------


def prepare(shape_name: str, n: int, dsn: str, root: Path, batch: int) -> Case:
    """Write the events, mapping and config of one table; create the target table."""
    from tunggal.config import load_config
    from tunggal.runtime.app import load_all, open_sink
    from tunggal.sink.schema import apply_schema, plan_schema

    shape, table = SHAPES[shape_name]
    case = Case(shape_name, table, dsn, root / shape_name, batch)
    case.work.mkdir(parents=True)
    if shape_name == "merged":
        return _prepare_merged(case, n)
    workload = mixed_workload(n, seed=11, table=table, shape=shape)
    case.events_file.write_bytes(b"\n".join(workload.lines) + b"\n")
    case.rows_file.write_bytes(pickle.dumps([workload.final[k] for k in sorted(workload.final)]))
    case.mapping_file.write_text(narrow_mapping(table=table, shape=shape))
    (case.work / "tunggal.yaml").write_text(
        f"target:\n  dsn: {dsn}\nmappings: [{case.mapping_file}]\n"
        f"state_dir: {case.work}/state\n"
        f"batch:\n  max_size: {batch}\n  max_age_ms: 1000\nmetrics:\n  enabled: false\n"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(shape.ddl.format(name=table))
    config = load_config(case.work / "tunggal.yaml")
    mappings, _ = load_all(config)
    sink = open_sink(config, mappings, check=False)
    apply_schema(sink.engine, plan_schema(mappings.targets(), sink.introspect()))
    sink.close()
    print(
        f"{shape_name}: {len(workload.lines)} events ({workload.counts}), "
        f"{len(workload.final)} final rows, {len(shape.columns)} columns",
        file=sys.stderr,
    )
    return case


def _prepare_merged(case: Case, n: int) -> Case:
    """Two sources of n/2 events each, on one key space, into one target table."""
    from tunggal.config import load_config
    from tunggal.runtime.app import load_all, open_sink
    from tunggal.sink.schema import apply_schema, plan_schema

    files = []
    for i, (source, columns) in enumerate(MERGED_SOURCES.items()):
        work = mixed_workload(n // 2, source=source, seed=11 + i, table="public.kegiatan")
        (case.work / f"events-{source}.jsonl").write_bytes(b"\n".join(work.lines) + b"\n")
        mapping = case.work / f"{source}.yaml"
        mapping.write_text(
            f"source: {source}\ntables:\n  - from: public.kegiatan\n    to: {case.table}\n"
            f"    key: [id]\n{MERGED_RULES if i == 0 else ''}"
            f"    columns: {{{', '.join(f'{c}: {c}' for c in columns)}}}\n"
        )
        files.append(str(mapping))
        print(f"merged: source {source}: {len(work.lines)} events ({work.counts})", file=sys.stderr)
    (case.work / "tunggal.yaml").write_text(
        f"target:\n  dsn: {case.dsn}\nmappings: [{', '.join(files)}]\n"
        f"state_dir: {case.work}/state\n"
        f"batch:\n  max_size: {case.batch}\n  max_age_ms: 1000\nmetrics:\n  enabled: false\n"
    )
    with psycopg.connect(case.dsn, autocommit=True) as conn:
        conn.execute(NARROW.ddl.format(name=case.table))
    config = load_config(case.work / "tunggal.yaml")
    mappings, _ = load_all(config)
    sink = open_sink(config, mappings, check=False)
    apply_schema(sink.engine, plan_schema(mappings.targets(), sink.introspect()))
    sink.close()
    return case


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def print_table(results: dict[str, list[StageResult]], variants: list[Variant]) -> None:
    from tunggal.native import build as which_build

    print(f"tunggal's per-event path: {which_build()}")
    for variant in variants:
        if variant is PURE:
            print(f"  rows marked{variant.mark}: the same sources, pure Python")
        elif variant.pythonpath is not None:
            print(f"  rows marked{variant.mark}: the package at that commit, pure Python")
    print(
        f"{'table':<8}{'stage':<42}{'rate':>18}{'vs COPY':>9}{'seconds':>9}{'CPU s':>8}"
        f"{'peak RSS':>10}"
    )

    def narrow_replay(variant: str) -> StageResult | None:
        return next(
            (
                r
                for r in results.get("narrow", [])
                if r.stage.startswith("replay") and r.variant == variant
            ),
            None,
        )

    narrow = narrow_replay("")
    for shape_name, stages in results.items():
        copy = next((r for r in stages if r.stage.startswith("raw COPY")), None)
        for r in stages:
            ratio = f"{r.rate / copy.rate:.1%}" if copy else "-"
            single = narrow_replay(r.variant)
            if shape_name == "merged" and single is not None:
                ratio = f"{r.rate / single.rate:.0%}*"
            print(
                f"{shape_name:<8}{r.stage:<42}{r.rate:>11,.0f} {r.unit + '/s':<6}{ratio:>9}"
                f"{r.seconds:>9.2f}{r.cpu_s:>8.2f}{r.peak_rss_mb:>7.0f} MB"
            )
    if "merged" in results and narrow is not None:
        print("* merged: of the narrow table's single-source `replay` rate, same events in all")


def run_pipelines(
    cluster: PgCluster, root: Path, args: argparse.Namespace, variants: list[Variant]
) -> dict[str, Any]:
    """The daemon as users run it (`tunggal run` subprocesses), narrow table, on this cluster."""
    chosen = {p for p in args.pipelines.split(",") if p}
    out: dict[str, Any] = {}
    from measure import quiesce

    if "kafka" in chosen:
        from kafka_stage import bench_kafka, bench_kafka_lag

        from tunggal.devtools.kafkabroker import TansuBroker

        # Each stage gets a broker of its own: tansu's memory storage grows slower with the data
        # it holds (its CPU climbs towards a full core as ~400,000 messages arrive at 5,000/s,
        # and Connect's own produce lag with it), so one stage's topics would slow the next.
        for run, variant in enumerate(variants):  # each a database and source of its own
            for n in (1, 2):
                work = mixed_workload(args.events, source=f"kbench{n}r{run}", seed=11)
                quiesce(cluster)
                broker = TansuBroker().start()
                try:
                    with build(variant):
                        out[f"kafka_{n}{'_' if variant.key else ''}{variant.key}"] = bench_kafka(
                            cluster, broker, work.lines, len(work.final), n, root / "kafka", run
                        )
                finally:
                    broker.stop()
        quiesce(cluster)
        broker = TansuBroker().start()
        try:
            out["kafka_lag"] = bench_kafka_lag(
                cluster, broker, root / "kafka", args.rate, args.seconds, args.warmup
            )
        finally:
            broker.stop()
    if "embedded" in chosen:
        from embedded_stage import bench_daemon, bench_lag, bench_noop

        work_dir = root / "embedded"
        work_dir.mkdir(parents=True, exist_ok=True)
        quiesce(cluster)
        out["embedded_noop"] = bench_noop(cluster, work_dir, args.events)
        quiesce(cluster)
        out["embedded_daemon"] = bench_daemon(cluster, work_dir, args.events)
        quiesce(cluster)
        out["embedded_lag"] = bench_lag(cluster, work_dir, args.rate, args.seconds, args.warmup)
    if "verify" in chosen:
        from verify_stage import bench_verify

        quiesce(cluster)
        out["verify"] = bench_verify(cluster, root / "verify", args.verify_rows)
    return out


def _lags(lag: dict[str, Any]) -> str:
    return f"p50 {lag['lag_p50_s']:.2f}s p99 {lag['lag_p99_s']:.2f}s"


def _print_lag(what: str, lag: dict[str, Any]) -> None:
    print(f"{what:<52}{_lags(lag):>22}{lag['peak_rss_mb']:>8.0f} MB")
    warm = lag.get("warmup")
    if warm:
        first = f"  the first {warm['seconds']} s after start"
        print(f"{first:<52}{_lags(warm):>22}")


def print_pipelines(p: dict[str, Any], rate: int, variants: list[Variant]) -> None:
    if not p:
        return
    print(f"\n{'pipeline (narrow table)':<52}{'rate / lag':>22}{'peak RSS':>11}")
    if "kafka_1" in p:
        one, two = p["kafka_1"], p["kafka_2"]
        print(
            f"{'Kafka -> PostgreSQL, 1 instance':<52}{one['events_per_s']:>15,.0f} ev/s"
            f"{one['peak_rss_mb_per_instance']:>8.0f} MB"
        )
        print(
            f"{'Kafka -> PostgreSQL, 2 instances':<52}{two['events_per_s']:>15,.0f} ev/s"
            f"{two['peak_rss_mb_per_instance']:>8.0f} MB   "
            f"({two['events_per_s'] / one['events_per_s']:.2f}x one)"
        )
        for variant in variants[1:]:
            for n in (1, 2):
                other, installed = p[f"kafka_{n}_{variant.key}"], p[f"kafka_{n}"]
                what = f"Kafka -> PostgreSQL, {n} instance{'s' if n > 1 else ''}{variant.mark}"
                print(
                    f"{what:<52}{other['events_per_s']:>15,.0f} ev/s"
                    f"{other['peak_rss_mb_per_instance']:>8.0f} MB   "
                    f"(installed: {installed['events_per_s'] / other['events_per_s']:.2f}x)"
                )
        _print_lag(f"Kafka lag at {rate}/s, Connect included", p["kafka_lag"])
    if "embedded_noop" in p:
        noop, daemon = p["embedded_noop"], p["embedded_daemon"]
        print(f"{'embedded engine -> no-op handler':<52}{noop['events_per_s']:>15,.0f} ev/s")
        print(
            f"{'embedded engine -> tunggal run -> PostgreSQL':<52}"
            f"{daemon['events_per_s']:>15,.0f} ev/s{daemon['peak_rss_mb']:>8.0f} MB   "
            f"({daemon['events_per_s'] / noop['events_per_s']:.0%} of no-op)"
        )
        _print_lag(f"embedded lag at {rate}/s", p["embedded_lag"])
    if "verify" in p:
        from verify_stage import print_verify

        print_verify(p["verify"])


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == CHILD_FLAG:
        _stage_child(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000, help="batch.max_size for replay")
    parser.add_argument(
        "--tables",
        default="narrow,wide,merged",
        help="comma-separated: narrow,wide,merged (narrow, written by two sources)",
    )
    parser.add_argument(
        "--stages",
        default=",".join(stage.__name__.removeprefix("stage_") for stage in STAGES),
        help="comma-separated subset of the stages, in STAGES order",
    )
    parser.add_argument(
        "--pipelines",
        default="kafka,embedded",
        help="whole-daemon stages after the tables: kafka (Kafka -> PG, 1 and 2 instances; "
        "lag through Connect), embedded (the engine with a no-op handler vs tunggal run; lag), "
        "verify (`tunggal verify` on a table in sync vs count(*) + md5(string_agg), "
        "bench/verify_stage.py; not in the default); '' skips them",
    )
    parser.add_argument(
        "--verify-rows", type=int, default=1_000_000, help="rows of the verify stage's table"
    )
    parser.add_argument("--rate", type=int, default=5000, help="offered rate for the lag stages")
    parser.add_argument("--seconds", type=int, default=60, help="duration of the lag stages")
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="seconds offered right after start, before the lag stages measure (reported apart)",
    )
    parser.add_argument(
        "--pure",
        action="store_true",
        help="also measure Tunggal's stages (decode+map, replay, Kafka 1 and 2 instances) on the "
        "pure-Python build, same events, same run: rows marked [pure] beside the compiled ones",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure Tunggal's stages (as --pure does) on the package of an earlier commit "
        "(git), e.g. the one an issue's figures were taken on: rows marked [REV]",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tunggal-bench-"))
    results: dict[str, list[StageResult]] = {}
    cluster = PgCluster(name="bench", fsync=True).start()
    try:
        dsn = cluster.create_database("bench")
        with psycopg.connect(dsn) as conn:
            server = conn.info.server_version
        # The pure build gets a database of its own, with the same events (same seed): a second
        # replay into the first build's rows would be skipped by the sink's guard.
        variants = [INSTALLED]
        if args.pure:
            variants.append(PURE)
        if args.baseline:
            variants.append(baseline(args.baseline, root))
        # Each other build gets a database of its own, with the same events (same seed): a
        # second replay into the first build's rows would be skipped by the sink's guard.
        dsns = [dsn] + [cluster.create_database(f"bench_{v.key}") for v in variants[1:]]
        for shape_name in args.tables.split(","):
            stages = MERGED_STAGES if shape_name == "merged" else STAGES
            chosen = [
                stage
                for stage in stages
                if shape_name == "merged"
                or stage.__name__.removeprefix("stage_") in args.stages.split(",")
            ]
            results[shape_name] = []
            for variant, where in zip(variants, dsns, strict=True):
                case = prepare(
                    shape_name, args.events, where, root / (variant.key or "installed"), args.batch
                )
                results[shape_name] += [
                    run_stage(stage, case, variant)
                    for stage in chosen
                    if variant is INSTALLED or stage in TUNGGAL_STAGES
                ]
        print_table(results, variants)  # before the pipelines, which take long and may fail
        pipelines = run_pipelines(cluster, root, args, variants)
    finally:
        cluster.destroy()

    print_pipelines(pipelines, args.rate, variants)
    from tunggal.native import build as which_build

    report: dict[str, Any] = {
        "machine": {**_machine(), "postgresql": server, "tunggal": which_build()},
        "events": args.events,
        "batch_size": args.batch,
        "tables": {
            name: [{**asdict(r), "rate": r.rate} for r in stages]
            for name, stages in results.items()
        },
        "pipelines": pipelines,
        "variants": [asdict(v) for v in variants],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
