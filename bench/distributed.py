"""Distributed benchmark: workloads through the polling worker on the local emulators.

    .venv/bin/python bench/distributed.py [--quick] [--big] [--concurrency N] [--repeat N] [--warmup NODES]
                                          [--only NAME ...]

Starts Azurite, the Cosmos DB stand-in and redis-server on free ports, then runs each workload
through ``AzureQueueAdapter``'s polling worker in this process (the same code path as
``python -m flowcraft_core worker``), and prints one table:

- nodes executed, wall time, nodes/s;
- Cosmos DB requests per node: the store's own counter by kind, checked against every HTTP request
  the Cosmos client sent (a ``raw_request_hook``);
- Cosmos DB KiB read and written per node, counted inside the stand-in (``bench/traffic.py``): response
  bodies and request bodies of the workload's database;
- Redis round trips per node (the coordination store's counter);
- queue operations per node, counted on the wire (a ``raw_request_hook`` on the QueueClient): sends,
  deletes, receives (receives include empty polls, so they depend on timing);
- p50/p95 hop latency: from a predecessor's ``node:finish`` to its successor's ``node:start`` (for a
  join, from the last predecessor to finish), recorded by an event-bus subscriber.

- CPU per node of this process (the worker) and of each emulator's process, in the timed part.

First, unmeasured, ``--warmup`` node executions (default 2000: fan-outs of 500 and 10 chains of 20): a
freshly started emulator spends about twice the CPU per request on its first thousand or so requests
(``bench/primitives.py`` shows it), so without a warm-up the first workload measures the emulators'
JIT. ``--warmup 0`` measures cold. Each workload gets its own queue, Cosmos database and Redis key
prefix, and one warm-up run (client metadata caches, Lua script loading) before counting starts. Request
counts (excluding receives and the time-based ``patch`` heartbeat) are the same on every run of a
workload: ``--repeat 2`` checks it, and prints every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from azure.core.exceptions import ResourceNotFoundError  # noqa: E402
from azure.cosmos.aio import CosmosClient  # noqa: E402
from azure.storage.queue.aio import QueueClient  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from bench.traffic import Traffic, database_traffic  # noqa: E402
from bench.workloads import REGISTRY, Workload, chain, diamond, fanout, percentile, predecessors  # noqa: E402
from flowcraft_core.azure.adapter import AzureQueueAdapter, RuntimeOptions, WorkerOptions  # noqa: E402
from flowcraft_core.azure.clients import (  # noqa: E402
    cosmos_transport,
    ensure_cosmos_containers,
    http_env_settings,
    make_redis,
)
from flowcraft_core.azure.redis_store import RedisCoordinationStore  # noqa: E402
from flowcraft_core.settings import Settings  # noqa: E402
from flowcraft_dev.emulators import Emulators  # noqa: E402

# Request kinds whose count depends on timing rather than on the workload: the lastUpdated heartbeat
# (a patch every 30 s per run per worker) and, for a job running longer than half the visibility
# timeout, the keep-alive (a queue update, a patch and a status read every 30 s); and the loads'
# queries, since concurrent jobs of one run share one read of what is new (at most one per job).
TIME_BASED_COSMOS = ("patch", "query")


# Node executions run, unmeasured, before the workloads. A freshly started emulator runs its first
# thousand or so requests at about half its later speed while V8 compiles its hot paths (Azurite:
# 2.3 ms of CPU per send-and-delete pair cold, 1.1 ms after ~1500 pairs), which made the first workload
# of a run 20-40 % slower than the same workload a minute later.
WARM_UP_NODES = 2000

# ----------------------------------------------------------------------------- counting
class HttpCounter:
    """Counts HTTP requests a client sends, by operation, via the SDK's raw_request_hook."""

    def __init__(self, classify: Callable[[str, str, bool], str]) -> None:
        self.counts: Counter[str] = Counter()
        self._classify = classify

    def __call__(self, request: Any) -> None:
        http = request.http_request
        self.counts[self._classify(http.method, http.url, bool(http.body))] += 1

    def reset(self) -> None:
        """Start from zero."""
        self.counts.clear()


def classify_queue(method: str, url: str, has_body: bool = False) -> str:
    """Storage Queue REST operation of a request.

    An update with a body gives the message new content: a finished job's message handed on to its
    successor (AzureQueueAdapter); one without only extends a long job's visibility (keep-alive).
    """
    path = url.split("?", 1)[0].rstrip("/")
    if path.endswith("/messages"):
        if method == "POST":
            return "send"
        if method == "GET":
            return "peek" if "peekonly=true" in url.lower() else "receive"
        if method == "DELETE":
            return "clear"
    elif "/messages/" in path:
        if method == "PUT":
            return "hand-on" if has_body else "update"
        return "delete" if method == "DELETE" else method.lower()
    return "other"


def classify_cosmos(method: str, url: str, has_body: bool = False) -> str:
    """Every Cosmos request counts as one; the method is kept for the record."""
    return method.lower()


class HopRecorder:
    """Event-bus subscriber: first start/finish time of each node, and which runs finished."""

    def __init__(self) -> None:
        self.started: dict[tuple[str, str], float] = {}
        self.finished: dict[tuple[str, str], float] = {}
        self.enqueued: dict[tuple[str, str], float] = {}
        self.executions = 0
        self.run_status: dict[str, str] = {}
        self.expected: set[str] = set()
        self.all_done = asyncio.Event()

    def reset(self, expected: set[str]) -> None:
        """Forget everything; wait for these run ids."""
        self.started.clear()
        self.finished.clear()
        self.enqueued.clear()
        self.executions = 0
        self.run_status.clear()
        self.expected = set(expected)
        self.all_done = asyncio.Event()

    def expect(self, run_id: str) -> None:
        """Also wait for this run."""
        self.expected.add(run_id)

    async def emit(self, event: dict[str, Any]) -> None:
        """Record the event (the EventBus protocol)."""
        kind = event["type"]
        payload = event.get("payload", {})
        now = time.perf_counter()
        if kind == "node:start":
            self.executions += 1
            self.started.setdefault((payload["runId"], payload["nodeId"]), now)
        elif kind == "node:finish":
            self.finished.setdefault((payload["runId"], payload["nodeId"]), now)
        elif kind == "job:enqueued":
            self.enqueued.setdefault((payload["runId"], payload["nodeId"]), now)
        elif kind in ("workflow:finish", "workflow:cancelled"):
            self.run_status[payload["runId"]] = str(payload.get("status", "cancelled"))
            if self.expected and self.expected <= set(self.run_status):
                self.all_done.set()

    def hops(self, preds: Mapping[str, list[str]]) -> tuple[list[float], list[float], list[float]]:
        """Per hop: total (finish->start), route (finish->enqueued), pickup (enqueued->start), in s."""
        total: list[float] = []
        route: list[float] = []
        pickup: list[float] = []
        for (run_id, node_id), start in self.started.items():
            sources = preds.get(node_id) or []
            finishes = [self.finished.get((run_id, p)) for p in sources]
            if not finishes or any(f is None for f in finishes):
                continue
            last = max(f for f in finishes if f is not None)
            total.append(start - last)
            enq = self.enqueued.get((run_id, node_id))
            if enq is not None:
                route.append(enq - last)
                pickup.append(start - enq)
        return total, route, pickup


# ----------------------------------------------------------------------------- results
@dataclass
class Result:
    """The figures of one workload run."""

    name: str
    runs: int
    nodes_expected: int
    nodes: int = 0
    executions: int = 0
    wall: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    cosmos: dict[str, int] = field(default_factory=dict)
    cosmos_http: int = 0
    cosmos_http_methods: dict[str, int] = field(default_factory=dict)
    redis: int = 0
    redis_server: dict[str, int] = field(default_factory=dict)
    queue: dict[str, int] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)
    items_read: int = 0
    peak_rss_mib: float = 0.0
    # CPU seconds this process (worker and bench recorder) spent in the timed part: less load-dependent
    # than wall time, since it does not count the time the process waited for a core.
    cpu: float = 0.0
    # CPU seconds each emulator process spent in the timed part (the emulators share the machine's
    # cores with the worker, so their CPU per node bounds the throughput as much as the worker's).
    emulator_cpu: dict[str, float] = field(default_factory=dict)
    # Node outputs absent from the final result contexts (read after the timed part).
    missing_outputs: int = 0
    hop_total: list[float] = field(default_factory=list)
    hop_route: list[float] = field(default_factory=list)
    hop_pickup: list[float] = field(default_factory=list)

    @property
    def cosmos_total(self) -> int:
        """All Cosmos requests the store counted."""
        return sum(self.cosmos.values())

    def per_node(self, n: float) -> float:
        """A count per executed node."""
        return n / self.nodes if self.nodes else 0.0

    def reproducible_counts(self) -> dict[str, int]:
        """The counts that must not change between runs of the same workload."""
        counts = {f"cosmos.{k}": v for k, v in sorted(self.cosmos.items()) if k not in TIME_BASED_COSMOS}
        # Each keep-alive round also read the status item once: not part of the workload's own reads.
        counts["cosmos.read"] = counts.get("cosmos.read", 0) - self.keep_alive_rounds
        counts["redis"] = self.redis
        counts.update({f"queue.{k}": v for k, v in sorted(self.queue.items()) if k not in ("receive", "update")})
        counts["nodes"] = self.nodes
        return counts

    @property
    def keep_alive_rounds(self) -> int:
        """Keep-alive rounds of long jobs (one queue update each)."""
        return self.queue.get("update", 0)

    def ok(self) -> bool:
        """Every run completed, every node ran exactly once, every node's output is in its result."""
        return (self.statuses.get("completed", 0) == self.runs and self.nodes == self.nodes_expected
                and self.executions == self.nodes_expected and self.missing_outputs == 0)


# ----------------------------------------------------------------------------- the bench
class Bench:
    """Shared clients; one adapter (own queue, database, key prefix) per workload."""

    def __init__(self, settings: Settings, concurrency: int, timeout: float, eager: bool = True,
                 emulator_cpu: Callable[[], dict[str, float]] | None = None) -> None:
        self.settings = settings
        self.emulator_cpu = emulator_cpu or dict
        self.concurrency = concurrency
        self.timeout = timeout
        self.eager = eager
        self.cosmos_http = HttpCounter(classify_cosmos)
        self.queue_http = HttpCounter(classify_queue)
        self.cosmos: CosmosClient | None = None
        self.redis: Redis | None = None
        self.token = uuid.uuid4().hex[:8]
        self.serial = 0
        self.last_runs: list[str] = []

    async def __aenter__(self) -> Bench:
        verify = self.settings.cosmos_verify_tls
        kwargs: dict[str, Any] = {} if verify else {"connection_verify": False}
        self.cosmos = CosmosClient.from_connection_string(self.settings.cosmos_connection_string.get_secret_value(),
                                                          raw_request_hook=self.cosmos_http, **kwargs,
                                                          **cosmos_transport())
        self.redis = make_redis(self.settings.redis_url.get_secret_value())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.cosmos is not None:
            await self.cosmos.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _adapter(self, recorder: HopRecorder, blueprints: Mapping[str, Any]) -> tuple[
            AzureQueueAdapter, list[QueueClient], str]:
        assert self.cosmos is not None and self.redis is not None
        self.serial += 1
        name = f"bench-{self.token}-{self.serial}"
        queue = QueueClient.from_connection_string(self.settings.storage_connection_string.get_secret_value(), name,
                                                   raw_request_hook=self.queue_http, **http_env_settings())
        poison = QueueClient.from_connection_string(self.settings.storage_connection_string.get_secret_value(),
                                                    f"{name}-poison", **http_env_settings())
        await queue.create_queue()
        await ensure_cosmos_containers(self.cosmos, name, [self.settings.cosmos_context_container,
                                                           self.settings.cosmos_status_container])
        adapter = AzureQueueAdapter(
            queue_client=queue, cosmos_client=self.cosmos,
            coordination_store=RedisCoordinationStore(self.redis, prefix=name),
            cosmos_database_name=name, context_container_name=self.settings.cosmos_context_container,
            status_container_name=self.settings.cosmos_status_container,
            runtime_options=RuntimeOptions(registry=REGISTRY, blueprints=blueprints, event_bus=recorder),
            worker_options=WorkerOptions(concurrency=self.concurrency,
                                         visibility_timeout=self.settings.visibility_timeout,
                                         eager_dispatch=self.eager),
            poison_queue_client=poison,
        )
        return adapter, [queue, poison], name

    async def _drive(self, adapter: AzureQueueAdapter, recorder: HopRecorder, blueprint_id: str,
                     runs: int) -> tuple[float, bool]:
        """Start the worker and the runs, wait for every run to end, stop the worker."""
        recorder.reset(set())
        await adapter.start()
        t0 = time.perf_counter()

        async def one() -> None:
            run_id = uuid.uuid4().hex
            recorder.expect(run_id)
            await adapter.start_run(blueprint_id, {}, run_id)

        await asyncio.gather(*(one() for _ in range(runs)))
        self.last_runs = sorted(recorder.expected)
        try:
            await asyncio.wait_for(recorder.all_done.wait(), self.timeout)
            finished = True
        except TimeoutError:
            finished = False
        wall = time.perf_counter() - t0
        await adapter.stop()  # waits for in-flight jobs (their deletes and Redis clean-up)
        return wall, finished

    async def run(self, workload: Workload, *, profiler: Any = None) -> Result:
        """Warm up (one small diamond run), then run the workload once with fresh counters.

        ``profiler`` (pyinstrument's) is started after the warm-up and stopped when the runs ended.
        """
        assert self.cosmos is not None and self.redis is not None
        bp = workload.blueprint
        warm = diamond()
        recorder = HopRecorder()
        adapter, queues, name = await self._adapter(recorder, {bp.id: bp, warm.id: warm})
        try:
            # Warm-up: Cosmos container metadata, Redis scripts (EVALSHA/SCRIPT LOAD), connections.
            await self._drive(adapter, recorder, warm.id, 1)
            adapter.cosmos_requests.reset()
            adapter.run_store.items_read = 0
            adapter.coordination.counter.count = 0  # type: ignore[attr-defined]
            traffic_before = await database_traffic(self.settings.cosmos_connection_string, name)
            self.cosmos_http.reset()
            self.queue_http.reset()
            await self.redis.config_resetstat()
            if profiler is not None:
                profiler.start()
            cpu0 = time.process_time()
            emu0 = self.emulator_cpu()
            try:
                wall, finished = await self._drive(adapter, recorder, bp.id, workload.runs)
            finally:
                if profiler is not None:
                    profiler.stop()
            result = Result(workload.name, workload.runs, workload.nodes, wall=wall)
            result.cpu = time.process_time() - cpu0
            result.emulator_cpu = {k: v - emu0.get(k, 0.0) for k, v in self.emulator_cpu().items()}
            result.traffic = await database_traffic(self.settings.cosmos_connection_string, name) - traffic_before
            result.items_read = adapter.run_store.items_read
            # ru_maxrss is KiB on Linux: the peak of this process (worker and bench) so far.
            result.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            result.cosmos = dict(adapter.cosmos_requests.counts)
            result.cosmos_http = sum(self.cosmos_http.counts.values())
            result.cosmos_http_methods = dict(sorted(self.cosmos_http.counts.items()))
            result.redis = adapter.coordination.counter.count  # type: ignore[attr-defined]
            result.redis_server = await redis_commands(self.redis)
            result.queue = {k: self.queue_http.counts.get(k, 0) for k in ("send", "receive", "delete")}
            result.queue.update({k: v for k, v in self.queue_http.counts.items() if k not in result.queue})
            result.nodes = len(recorder.started)
            result.executions = recorder.executions
            result.statuses = Counter(recorder.run_status.values())
            if not finished:
                result.statuses["unfinished"] = workload.runs - len(recorder.run_status)
            result.hop_total, result.hop_route, result.hop_pickup = recorder.hops(predecessors(bp))
            for run_id in self.last_runs:
                status = await adapter.run_result(run_id)
                context = ((status or {}).get("result") or {}).get("context") or {}
                result.missing_outputs += sum(f"_outputs.{n.id}" not in context for n in bp.nodes)
            return result
        finally:
            await adapter.stop()
            for q in queues:
                with contextlib.suppress(ResourceNotFoundError):
                    await q.delete_queue()
                await q.close()
            await self.cosmos.delete_database(name)


async def redis_commands(client: Redis) -> dict[str, int]:
    """Commands the (private) redis-server executed since CONFIG RESETSTAT, by name.

    These include the commands Lua scripts run inside the server, so they exceed the round trips.
    """
    info = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}
    for ours in ("info", "config|resetstat"):
        calls.pop(ours, None)
    return dict(sorted(calls.items()))


# ----------------------------------------------------------------------------- output
def machine_info() -> dict[str, str]:
    """Where the figures came from."""
    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    def npm_version(package: str) -> str:
        try:
            data = json.loads((ROOT / "node_modules" / package / "package.json").read_text())
            return str(data.get("version", "?"))
        except OSError:
            return "?"

    redis_v = version(["redis-server", "--version"]).split()
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "azurite": npm_version("azurite"),
        "cosmosdb-server": npm_version("@vercel/cosmosdb-server"),
        "redis": next((p.split("=", 1)[1] for p in redis_v if p.startswith("v=")), "?"),
        "load average (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def ms(seconds: float) -> str:
    """Milliseconds, one decimal."""
    return f"{seconds * 1000:.1f}"


def cpu_column(r: Result) -> str:
    """CPU per node of the worker's process and of each emulator, in ms."""
    parts = [r.cpu] + [r.emulator_cpu.get(k, 0.0) for k in ("azurite-queue", "cosmosdb-server", "redis-server")]
    return " / ".join(f"{1000 * r.per_node(x):.1f}" for x in parts)


def table(results: Sequence[Result]) -> str:
    """The results as one Markdown table."""
    head = ("| workload | nodes | wall s | nodes/s | Cosmos req/node | Cosmos KiB read/node | "
            "Cosmos KiB written/node | Cosmos by kind (total) | Redis/node | queue send/recv/del/hand-on per node | "
            "hop p50 ms | hop p95 ms | CPU ms/node: worker / Azurite / Cosmos / Redis | ok |")
    lines = [head, "|" + "---|" * 14]
    for r in results:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.cosmos.items()))
        q = r.queue
        qcol = (f"{r.per_node(q.get('send', 0)):.2f} / {r.per_node(q.get('receive', 0)):.2f} / "
                f"{r.per_node(q.get('delete', 0)):.2f} / {r.per_node(q.get('hand-on', 0)):.2f}")
        lines.append(
            f"| {r.name} | {r.nodes} | {r.wall:.2f} | {r.nodes / r.wall if r.wall else 0:.1f} | "
            f"{r.per_node(r.cosmos_total):.2f} | {r.per_node(r.traffic.read) / 1024:.2f} | "
            f"{r.per_node(r.traffic.written) / 1024:.2f} | {kinds} | {r.per_node(r.redis):.2f} | {qcol} | "
            f"{ms(percentile(r.hop_total, 50))} | {ms(percentile(r.hop_total, 95))} | {cpu_column(r)} | "
            f"{'yes' if r.ok() else 'NO'} |")
    return "\n".join(lines)


def details(results: Sequence[Result]) -> str:
    """Exact counts (to check reproducibility) and the hop breakdown."""
    lines = []
    for r in results:
        counts = " ".join(f"{k}={v}" for k, v in r.reproducible_counts().items())
        extra = {f"cosmos.{k}": v for k, v in r.cosmos.items() if k in TIME_BASED_COSMOS}
        extra.update({"queue.receive": r.queue.get("receive", 0), "keep-alive rounds": r.keep_alive_rounds})
        lines.append(f"- {r.name}: {counts}; time-based: {' '.join(f'{k}={v}' for k, v in extra.items())}; "
                     f"Cosmos HTTP requests {r.cosmos_http} {r.cosmos_http_methods} (store counter {r.cosmos_total}); "
                     f"Redis server-side commands {sum(r.redis_server.values())} {r.redis_server}; "
                     f"Cosmos bytes read {r.traffic.read} written {r.traffic.written} in {r.traffic.requests} "
                     f"requests (stand-in), items returned by loads {r.items_read} "
                     f"({r.per_node(r.items_read):.2f}/node); peak RSS of this process so far "
                     f"{r.peak_rss_mib:.0f} MiB; CPU of this process {r.cpu:.2f} s "
                     f"({1000 * r.per_node(r.cpu):.2f} ms/node); "
                     f"runs {dict(r.statuses)}, node executions {r.executions}, node outputs missing from "
                     f"the results {r.missing_outputs}; hop p50/p95 ms: "
                     f"commit+route {ms(percentile(r.hop_route, 50))}/{ms(percentile(r.hop_route, 95))}, "
                     f"queue+pickup {ms(percentile(r.hop_pickup, 50))}/{ms(percentile(r.hop_pickup, 95))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def workloads(quick: bool, wide: int | None = None, big: bool = False) -> list[Workload]:
    """The workloads, in the order they run (the wide fan-out: 1000, 200 with quick, or `wide`;
    fanout-10000 last with big)."""
    wide = wide or (200 if quick else 1000)
    selected = [
        Workload("chain-20", chain(20)),
        Workload("chain-20 x10", chain(20), runs=10),
        Workload("fanout-32", fanout(32)),
        Workload("diamond x50", diamond(), runs=50),
        Workload(f"fanout-{wide}", fanout(wide)),
    ]
    if big:
        selected.append(Workload("fanout-10000", fanout(10_000)))
    return selected


def warm_up_workloads(nodes: int) -> list[Workload]:
    """Workloads of at least `nodes` node executions in all: fan-outs of 500 and 10 chains of 20, alternating."""
    selected: list[Workload] = []
    total = 0
    while total < nodes:
        wl = (Workload("warm-up fanout-500", fanout(500)) if len(selected) % 2 == 0
              else Workload("warm-up chain-20 x10", chain(20), runs=10))
        selected.append(wl)
        total += wl.nodes
    return selected


async def bench(settings: Settings, selected: list[Workload], concurrency: int, repeat: int,
                timeout: float, eager: bool = True, warm_up: int = 0,
                emulator_cpu: Callable[[], dict[str, float]] | None = None) -> tuple[list[Result], list[str], float]:
    """Warm up, then run the workloads (each `repeat` times).

    Returns every measured result, the reproducibility problems and the warm-up's wall time.
    """
    results: list[Result] = []
    problems: list[str] = []
    async with Bench(settings, concurrency, timeout, eager, emulator_cpu) as b:
        started = time.perf_counter()
        for wl in warm_up_workloads(warm_up):
            print(f"  {wl.name} (not measured) ...", file=sys.stderr, flush=True)
            if not (await b.run(wl)).ok():
                problems.append(f"{wl.name}: a warm-up run did not complete correctly")
        warm_up_wall = time.perf_counter() - started
        for wl in selected:
            seen: list[Result] = []
            for i in range(repeat):
                print(f"  {wl.name} ({i + 1}/{repeat}) ...", file=sys.stderr, flush=True)
                result = await b.run(wl)
                if repeat > 1:
                    result.name = f"{wl.name} ({i + 1}/{repeat})"
                seen.append(result)
            for other in seen[1:]:
                if other.reproducible_counts() != seen[0].reproducible_counts():
                    problems.append(f"{wl.name}: {seen[0].reproducible_counts()} != {other.reproducible_counts()}")
            results.extend(seen)
    return results, problems, warm_up_wall


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    defaults = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fanout-200 instead of fanout-1000")
    parser.add_argument("--concurrency", type=int, default=defaults.worker_concurrency,
                        help=f"jobs the worker handles at once (default from settings: {defaults.worker_concurrency})")
    parser.add_argument("--repeat", type=int, default=1, help="run each workload N times and compare counts")
    parser.add_argument("--only", nargs="*", default=None, help="workload names to run (e.g. chain-20)")
    parser.add_argument("--fanout", type=int, default=None, help="width of the wide fan-out (scaling runs)")
    parser.add_argument("--big", action="store_true", help="also run fanout-10000 (last; minutes)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a workload may take")
    parser.add_argument("--warmup", type=int, default=WARM_UP_NODES, metavar="NODES",
                        help="node executions to run, unmeasured, before the workloads (the emulators' JavaScript "
                             f"JIT and this process's first-use costs; default {WARM_UP_NODES}; 0 measures cold)")
    parser.add_argument("--no-eager", action="store_true",
                        help="every job through the queue (WorkerOptions.eager_dispatch=False): no hand-on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    selected = [w for w in workloads(args.quick, args.fanout, args.big) if not args.only or w.name.replace(" ", "") in
                {o.replace(" ", "") for o in args.only}]
    info = machine_info()
    started = time.perf_counter()
    with Emulators(repo_root=ROOT) as emu:
        settings = Settings.from_env({**os.environ, **emu.env()})
        results, problems, warm_up_wall = asyncio.run(bench(
            settings, selected, args.concurrency, args.repeat, args.timeout, eager=not args.no_eager,
            warm_up=args.warmup, emulator_cpu=emu.cpu_seconds))
    elapsed = time.perf_counter() - started
    print(f"# flowcraft-azure distributed benchmark (worker concurrency {args.concurrency}"
          f"{', --quick: fanout-200 instead of fanout-1000' if args.quick else ''}"
          f"{', --no-eager: every job through the queue' if args.no_eager else ''})")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    warm_nodes = sum(w.nodes for w in warm_up_workloads(args.warmup))
    print(f"warm-up: {warm_nodes} node executions in {warm_up_wall:.1f} s before the first measured workload"
          if warm_nodes else "warm-up: none (--warmup 0): the first workload runs on freshly started emulators")
    print()
    print(table(results))
    print()
    print("Exact counts per workload (same workload, same counts; receives include empty polls):")
    print(details(results))
    if args.repeat > 1:
        print(f"reproducibility over {args.repeat} repeats: " + ("identical counts" if not problems
                                                                   else "DIFFERENT: " + "; ".join(problems)))
    print(f"total bench time {elapsed:.1f}s")
    return 0 if all(r.ok() for r in results) and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
