"""The benchmark scripts still import and run (tiny sizes; asserts counts, never times)."""

from __future__ import annotations

import asyncio

from bench import cosmos_latency, distributed, inprocess, primitives, profile_workload
from bench.workloads import chain, diamond, fanout, percentile, predecessors


def test_inprocess_benchmark_runs_and_counts_nodes() -> None:
    results = dict(inprocess.run(fanout_width=5, chain_length=4, diamonds=3))
    assert set(results) == {"fanout-5", "chain-4", "diamond x3"}
    fan, line, diamonds = results["fanout-5"], results["chain-4"], results["diamond x3"]
    assert (fan.runs, fan.completed, fan.nodes, fan.node_errors) == (1, 1, 5 + 3, 0)
    assert (line.completed, line.nodes) == (1, 4)
    assert (diamonds.runs, diamonds.completed, diamonds.nodes) == (3, 3, 15)
    row = inprocess.format_row("fanout-5", fan)
    assert row.startswith("| fanout-5 | 1 | 8 |") and row.endswith("| yes |")


def test_workload_shapes() -> None:
    assert len(chain(20).nodes) == 20 and len(chain(20).edges) == 19
    wide = fanout(32)
    assert len(wide.nodes) == 35 and predecessors(wide)["join"] == [f"w{i}" for i in range(32)]
    assert predecessors(diamond())["d"] == ["b", "c"]
    names = [w.name for w in distributed.workloads(quick=True)]
    assert names == ["chain-20", "chain-20 x10", "fanout-32", "diamond x50", "fanout-200"]
    assert [w.nodes for w in distributed.workloads(quick=False)] == [20, 200, 35, 250, 1003]
    assert [w.nodes for w in distributed.workloads(quick=False, big=True)][-1] == 10003
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0 and percentile([], 95) == 0.0


def test_warm_up_covers_the_asked_nodes_with_both_shapes() -> None:
    assert distributed.warm_up_workloads(0) == []
    warm = distributed.warm_up_workloads(distributed.WARM_UP_NODES)
    assert sum(w.nodes for w in warm) >= distributed.WARM_UP_NODES
    assert {w.nodes for w in warm} == {503, 200}  # fan-outs of 500 and 10 chains of 20, alternating


def test_the_other_scripts_have_their_entry_points() -> None:
    # They start emulators, so they are not run here; importing them checks that their imports still
    # resolve (cosmos_latency once imported the emulators from a module that had moved).
    assert callable(cosmos_latency.main) and callable(primitives.main)


def test_hop_recorder_measures_from_last_predecessor() -> None:
    recorder = distributed.HopRecorder()
    bp = diamond()

    async def feed() -> None:
        recorder.reset({"r"})
        for kind, node in [("node:start", "a"), ("node:finish", "a"), ("node:start", "b"), ("node:start", "c"),
                           ("node:finish", "b"), ("node:finish", "c"), ("job:enqueued", "d"),
                           ("node:start", "d"), ("node:start", "d")]:
            await recorder.emit({"type": kind, "payload": {"runId": "r", "nodeId": node}})
        await recorder.emit({"type": "workflow:finish", "payload": {"runId": "r", "status": "completed"}})

    asyncio.run(feed())
    total, route, pickup = recorder.hops(predecessors(bp))
    assert len(total) == 3 and len(route) == 1 and len(pickup) == 1  # b, c from a; d from c (the last)
    assert recorder.executions == 5 and len(recorder.started) == 4
    assert recorder.all_done.is_set() and recorder.run_status == {"r": "completed"}


def test_request_classification() -> None:
    base = "http://127.0.0.1:1/devstoreaccount1/q"
    assert distributed.classify_queue("POST", f"{base}/messages?visibilitytimeout=0") == "send"
    assert distributed.classify_queue("GET", f"{base}/messages?numofmessages=16") == "receive"
    assert distributed.classify_queue("GET", f"{base}/messages?peekonly=true") == "peek"
    assert distributed.classify_queue("DELETE", f"{base}/messages/abc?popreceipt=x") == "delete"
    assert distributed.classify_queue("PUT", f"{base}/messages/abc?popreceipt=x") == "update"
    assert distributed.classify_queue("PUT", f"{base}/messages/abc?popreceipt=x", True) == "hand-on"
    assert profile_workload.workload("fanout", 3).nodes == 6
