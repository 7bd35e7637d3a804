"""Each emulator primitive alone, round after round: what the local emulators allow, cold and warm.

    .venv/bin/python bench/primitives.py [--rounds N] [--ops N] [--concurrency N]

Starts the emulators on free ports and, in each round, runs `ops` of each primitive the worker uses,
from the async SDK clients the runtime builds, `concurrency` at a time: a queue send followed by its
delete, a queue update that gives a message new content (a hand-on), a Cosmos DB create followed by a
point read, and a Cosmos query of one partition of 100 items that returns none of them. Per primitive
and round it prints requests per second (wall time) and the CPU each side spent per request: this
process (the SDK) and the emulator's process.

It shows why ``bench/distributed.py`` warms up before it measures: a freshly started emulator (Node.js)
spends about twice the CPU per request on its first thousand or so requests as it does once V8 has
compiled its hot paths.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from azure.storage.queue.aio import QueueClient  # noqa: E402

from flowcraft_core.azure.clients import ensure_cosmos_containers, http_env_settings, make_cosmos_client  # noqa: E402
from flowcraft_dev.emulators import Emulators  # noqa: E402

BODY = "x" * 600  # about a job message's size

QUERIED_ITEMS = 100  # about a fan-out of 100's records
Row = tuple[int, str, float, float, float]


async def _pool(ops: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> None:
    """Run op(0..ops-1), `concurrency` at a time."""
    numbers = iter(range(ops))

    async def lane() -> None:
        for i in numbers:
            await op(i)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


async def measure(emu: Emulators, rounds: int, ops: int, concurrency: int) -> list[Row]:
    """(round, primitive, requests per second, SDK CPU ms per request, emulator CPU ms per request) rows."""
    rows: list[Row] = []
    queue = QueueClient.from_connection_string(emu.queue_connection_string, f"prim-{uuid.uuid4().hex[:8]}",
                                               **http_env_settings())
    await queue.create_queue()
    async with make_cosmos_client(emu.cosmos_connection_string, verify_tls=False) as cosmos:
        containers = await ensure_cosmos_containers(cosmos, "bench-primitives", ["items", "queried"])
        items, queried = containers["items"], containers["queried"]
        # The stand-in evaluates a query against every item of its container, so the queried container
        # keeps a fixed size (the creates go elsewhere): the rounds then differ only by the warm-up.
        queried_run = uuid.uuid4().hex
        for i in range(QUERIED_ITEMS):
            await queried.create_item({"id": str(i), "runId": queried_run, "body": BODY}, no_response=True)
        held = [await queue.send_message(BODY, visibility_timeout=600) for _ in range(concurrency)]
        receipts = {m.id: m.pop_receipt for m in held}

        async def send_delete(i: int) -> None:
            sent = await queue.send_message(BODY, visibility_timeout=600)
            await queue.delete_message(sent.id, sent.pop_receipt)

        async def hand_on(i: int) -> None:
            message = held[i % concurrency]
            updated = await queue.update_message(message.id, pop_receipt=receipts[message.id], content=BODY,
                                                 visibility_timeout=600)
            receipts[message.id] = updated.pop_receipt

        run = uuid.uuid4().hex

        async def create_read(i: int) -> None:
            item = {"id": uuid.uuid4().hex, "runId": run, "body": BODY}
            await items.create_item(item, no_response=True)
            await items.read_item(item["id"], partition_key=run)

        async def query(i: int) -> None:
            since = int(time.time()) + 3600  # nothing is that new: the query's cost, not its result's
            found = queried.query_items("SELECT * FROM c WHERE c._ts >= @t",
                                        parameters=[{"name": "@t", "value": since}], partition_key=queried_run)
            [_ async for _ in found]

        primitives: list[tuple[str, str, int, Callable[[int], Awaitable[None]]]] = [
            ("queue send + delete", "azurite-queue", 2, send_delete),
            ("queue update with content (hand-on)", "azurite-queue", 1, hand_on),
            ("cosmos create + point read", "cosmosdb-server", 2, create_read),
            (f"cosmos query of one partition ({QUERIED_ITEMS} items, none returned)", "cosmosdb-server", 1, query),
        ]
        for rnd in range(1, rounds + 1):
            for name, service, requests, op in primitives:
                before = emu.cpu_seconds().get(service, 0.0)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                await _pool(ops, concurrency, op)
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
                emulator = emu.cpu_seconds().get(service, 0.0) - before
                n = ops * requests
                rows.append((rnd, name, n / wall, 1000 * cpu / n, 1000 * emulator / n))
        await cosmos.delete_database("bench-primitives")
    await queue.delete_queue()
    await queue.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=500, help="operations of each primitive per round")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args(argv)
    with Emulators(repo_root=ROOT) as emu:
        rows = asyncio.run(measure(emu, args.rounds, args.ops, args.concurrency))
    print(f"# each primitive alone: {args.ops} per round, {args.concurrency} at a time, freshly started emulators")
    print()
    print("| round | primitive | requests/s | SDK CPU ms/request | emulator CPU ms/request |")
    print("|---|---|---|---|---|")
    for rnd, name, rate, client, emulator in rows:
        print(f"| {rnd} | {name} | {rate:.0f} | {client:.2f} | {emulator:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
