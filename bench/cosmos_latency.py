"""Point-read latency of the Cosmos DB stand-in through the project's client (moved here from a test:
tests never assert times).

    .venv/bin/python bench/cosmos_latency.py [--reads N]

Starts the emulators on free ports, writes one item and reads it N times with ``make_cosmos_client``, and
prints the mean milliseconds per read (about 4 ms on the development machine with HTTP keep-alive, about
11 ms without: a figure far above that points at lost connection reuse).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flowcraft_core.azure.clients import ensure_cosmos_containers, make_cosmos_client  # noqa: E402
from flowcraft_dev.emulators import Emulators  # noqa: E402


async def measure(connection_string: str, reads: int) -> float:
    """Mean milliseconds per point read of one item."""
    async with make_cosmos_client(connection_string, verify_tls=False) as client:
        containers = await ensure_cosmos_containers(client, "bench-latency", ["items"])
        items = containers["items"]
        await items.upsert_item({"id": "a", "runId": "r1", "n": 0})
        await items.read_item("a", partition_key="r1")  # warm-up: connection and container metadata
        started = time.perf_counter()
        for _ in range(reads):
            await items.read_item("a", partition_key="r1")
        per_read_ms = (time.perf_counter() - started) / reads * 1000
        await client.delete_database("bench-latency")
        return per_read_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=30)
    args = parser.parse_args(argv)
    with Emulators(repo_root=ROOT) as emulators:
        per_read_ms = asyncio.run(measure(emulators.cosmos_connection_string, args.reads))
    print(f"cosmos stand-in point read: {per_read_ms:.1f} ms (mean of {args.reads})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
