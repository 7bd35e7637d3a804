"""In-process benchmark: the engine's own overhead per node, in FlowRuntime (no Azure, no I/O).

    .venv/bin/python bench/inprocess.py [--fanout 10000] [--chain 1000] [--diamonds 50] [--repeat 3]

Every node is trivial (returns its id), so the time per node is the engine's overhead: building the
node context, executing through the retry/timeout machinery, routing, the join gate, committing
the record and folding it into the context. The blueprint is compiled before the clock starts
(compile time is printed separately). With ``--repeat N`` the fastest of N runs is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.workloads import REGISTRY, Workload, chain, diamond, fanout  # noqa: E402
from flowcraft_core import FlowRuntime, WorkflowBlueprint  # noqa: E402


class CountingBus:
    """Event bus that counts node executions and finished runs (cheaper than collecting events)."""

    def __init__(self) -> None:
        self.node_starts = 0
        self.node_errors = 0

    async def emit(self, event: dict[str, Any]) -> None:
        """Count the events the figures need."""
        kind = event["type"]
        if kind == "node:start":
            self.node_starts += 1
        elif kind == "node:error":
            self.node_errors += 1


@dataclass
class Figures:
    """What one measurement produced: counts (deterministic) and times (not)."""

    runs: int
    completed: int
    nodes: int
    node_errors: int
    seconds: float
    compile_seconds: float

    @property
    def nodes_per_second(self) -> float:
        """Throughput."""
        return self.nodes / self.seconds if self.seconds else 0.0

    @property
    def overhead_us(self) -> float:
        """Wall time per node execution, in microseconds."""
        return self.seconds / self.nodes * 1e6 if self.nodes else 0.0


async def measure(blueprint: WorkflowBlueprint, *, runs: int = 1, concurrency: int = 32) -> Figures:
    """Run the blueprint `runs` times concurrently in a fresh FlowRuntime and time it."""
    bus = CountingBus()
    runtime = FlowRuntime(registry=REGISTRY, blueprints={blueprint.id: blueprint}, event_bus=bus,
                          concurrency=concurrency)
    t0 = time.perf_counter()
    runtime.engine.graph(blueprint.id)  # compile once, outside the timed part
    compile_seconds = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(runtime.run(blueprint.id) for _ in range(runs)))
    seconds = time.perf_counter() - t0
    return Figures(runs=runs, completed=sum(r.status == "completed" for r in results), nodes=bus.node_starts,
                   node_errors=bus.node_errors, seconds=seconds, compile_seconds=compile_seconds)


def best_of(blueprint: WorkflowBlueprint, runs: int, repeat: int) -> Figures:
    """The fastest of `repeat` measurements (each in its own event loop and runtime)."""
    results = [asyncio.run(measure(blueprint, runs=runs)) for _ in range(max(1, repeat))]
    return min(results, key=lambda f: f.seconds)


def format_row(name: str, f: Figures) -> str:
    """One Markdown table row."""
    ok = "yes" if f.completed == f.runs and f.node_errors == 0 else "NO"
    return (f"| {name} | {f.runs} | {f.nodes} | {f.seconds:.3f} | {f.nodes_per_second:,.0f} | "
            f"{f.overhead_us:.0f} | {f.compile_seconds * 1000:.0f} | {ok} |")


HEADER = ("| workload | runs | nodes | wall s | nodes/s | µs per node | compile ms | ok |\n"
          "|---|---|---|---|---|---|---|---|")


def workloads(fanout_width: int, chain_length: int, diamonds: int) -> list[Workload]:
    """The in-process workloads."""
    return [
        Workload(f"fanout-{fanout_width}", fanout(fanout_width)),
        Workload(f"chain-{chain_length}", chain(chain_length)),
        Workload(f"diamond x{diamonds}", diamond(), runs=diamonds),
    ]


def run(fanout_width: int = 10_000, chain_length: int = 1000, diamonds: int = 50,
        repeat: int = 1) -> list[tuple[str, Figures]]:
    """Measure every workload; returns (name, figures) pairs."""
    return [(w.name, best_of(w.blueprint, w.runs, repeat)) for w in workloads(fanout_width, chain_length, diamonds)]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fanout", type=int, default=10_000, help="parallel nodes of the fan-out")
    parser.add_argument("--chain", type=int, default=1000, help="length of the chain")
    parser.add_argument("--diamonds", type=int, default=50, help="concurrent diamond runs")
    parser.add_argument("--repeat", type=int, default=1, help="keep the fastest of N measurements")
    args = parser.parse_args(argv)
    results = run(args.fanout, args.chain, args.diamonds, args.repeat)
    print("# flowcraft-azure in-process benchmark (FlowRuntime, trivial nodes, concurrency 32)")
    print(HEADER)
    for name, figures in results:
        print(format_row(name, figures))
    return 0 if all(f.completed == f.runs and f.node_errors == 0 for _, f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
