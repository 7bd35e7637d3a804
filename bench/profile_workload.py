"""Profile one workload with pyinstrument and print where the time goes.

    .venv/bin/python bench/profile_workload.py distributed fanout 300      # emulators + polling worker
    .venv/bin/python bench/profile_workload.py distributed chain 20
    .venv/bin/python bench/profile_workload.py inprocess fanout 10000      # FlowRuntime only
    .venv/bin/python bench/profile_workload.py ... --html out.html         # interactive report instead

Only this Python process is sampled: time spent inside the emulators (Node.js, redis-server) shows
up as waiting (``select``/``epoll``) here. ``--async-mode`` is pyinstrument's (default ``enabled``:
await time is attributed to the awaiting coroutine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pyinstrument import Profiler  # noqa: E402

from bench import distributed, inprocess  # noqa: E402
from bench.workloads import Workload, chain, diamond, fanout  # noqa: E402


def workload(shape: str, size: int) -> Workload:
    """The workload named on the command line."""
    if shape == "chain":
        return Workload(f"chain-{size}", chain(size))
    if shape == "fanout":
        return Workload(f"fanout-{size}", fanout(size))
    return Workload(f"diamond x{size}", diamond(), runs=size)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=["distributed", "inprocess"])
    parser.add_argument("shape", choices=["chain", "fanout", "diamond"])
    parser.add_argument("size", type=int)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--html", type=Path, default=None, help="write an HTML report here")
    parser.add_argument("--async-mode", default="enabled", choices=["enabled", "disabled", "strict"])
    args = parser.parse_args(argv)
    wl = workload(args.shape, args.size)
    profiler = Profiler(async_mode=args.async_mode)
    if args.runtime == "inprocess":
        with profiler:
            figures = asyncio.run(inprocess.measure(wl.blueprint, runs=wl.runs))
        print(inprocess.format_row(wl.name, figures))
    else:
        from flowcraft_core.settings import Settings
        from flowcraft_dev.emulators import Emulators

        with Emulators(repo_root=ROOT) as emu:
            settings = Settings.from_env({**os.environ, **emu.env()})

            async def go() -> list[distributed.Result]:
                async with distributed.Bench(settings, args.concurrency, 900.0, emulator_cpu=emu.cpu_seconds) as b:
                    return [await b.run(wl, profiler=profiler)]

            results = asyncio.run(go())
        print(distributed.table(results))
    if args.html:
        args.html.write_text(profiler.output_html(), encoding="utf-8")
        print(f"wrote {args.html}")
    else:
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
