"""Command line: run, validate and draw workflows in process; run the standalone worker; manage runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import BlueprintError, FlowcraftError
from .models import WorkflowBlueprint, load_blueprints
from .settings import Settings, load_workflows


def _parse_context(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlowcraftError(f"--context is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FlowcraftError("--context must be a JSON object")
    return value


def _resolve_blueprint(target: str, module: str) -> tuple[str, dict[str, Any], dict[str, WorkflowBlueprint]]:
    """A blueprint file/folder, or an id in the workflows module; returns (id, registry, blueprints)."""
    registry: dict[str, Any] = {}
    blueprints: dict[str, WorkflowBlueprint] = {}
    try:
        registry, blueprints = load_workflows(module)
    except FlowcraftError:
        if not Path(target).exists():
            raise
    path = Path(target)
    if path.exists():
        loaded = load_blueprints(path)
        blueprints = {**blueprints, **loaded}
        if path.is_file():
            return next(iter(loaded)), registry, blueprints
        raise FlowcraftError(f"{target} is a folder; name a blueprint file or id")
    if target not in blueprints:
        raise FlowcraftError(f"unknown blueprint {target!r}; known: {', '.join(sorted(blueprints))}")
    return target, registry, blueprints


async def _cmd_run(args: argparse.Namespace) -> int:
    from .progress import Progress, ProgressBus, ProgressDisplay
    from .runtime import FlowRuntime

    bp_id, registry, blueprints = _resolve_blueprint(args.blueprint, args.workflows)
    with ProgressDisplay() as display:
        bus = ProgressBus(display) if args.progress else None
        runtime = FlowRuntime(registry=registry, blueprints=blueprints, event_bus=bus)
        result = await runtime.run(bp_id, _parse_context(args.context))
        if bus is not None:
            display.update(Progress(done=bus.ended, status=result.status))
    out = result.to_dict()
    if args.key:
        out = {"runId": result.run_id, "status": result.status, args.key: result.context.get(args.key)}
    print(json.dumps(out, indent=2, default=str))
    return 0 if result.status in ("completed", "awaiting") else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    from .lint import lint_blueprint

    blueprints = load_blueprints(args.path)
    registry: dict[str, Any] | None = None
    if args.workflows:
        registry, known = load_workflows(args.workflows)
        blueprints = {**known, **blueprints}
    problems = 0
    for bp in blueprints.values():
        issues = lint_blueprint(bp, registry, blueprints=blueprints)
        for issue in issues:
            print(f"{bp.id}: {issue}")
        problems += len(issues)
    print(f"{len(blueprints)} blueprint(s), {problems} problem(s)")
    return 1 if problems else 0


def _cmd_graph(args: argparse.Namespace) -> int:
    from .analysis import generate_mermaid

    path = Path(args.path)
    if path.exists():
        blueprints = load_blueprints(path)
    else:
        _, blueprints = load_workflows(args.workflows)
        blueprints = {args.path: blueprints[args.path]} if args.path in blueprints else {}
        if not blueprints:
            raise FlowcraftError(f"no blueprint file or id {args.path!r}")
    for bp in blueprints.values():
        print(f"%% {bp.id}\n{generate_mermaid(bp)}")
    return 0


async def _services(settings: Settings) -> Any:
    from .azure.services import build_services

    return await build_services(settings)


async def _cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.concurrency:
        settings = settings.model_copy(update={"worker_concurrency": args.concurrency})
    services = await _services(settings)
    adapter = services.adapter
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("flowcraft").info(
        "worker polling queue %s (concurrency %d, %d blueprint(s))", settings.queue_name,
        settings.worker_concurrency, len(adapter.engine.blueprints))
    await adapter.start()
    reconcile_every = max(5.0, settings.stalled_threshold_seconds / 2) if args.reconcile else None
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), reconcile_every or 3600)
            except TimeoutError:
                if reconcile_every:
                    await services.reconciler.run()
    finally:
        await adapter.stop()
        await services.close()
    return 0


async def _cmd_start(args: argparse.Namespace) -> int:
    services = await _services(Settings.from_env())
    try:
        run_id = await services.adapter.start_run(args.blueprint, _parse_context(args.context), args.run_id)
        print(json.dumps({"runId": run_id, "status": "running"}))
        if args.wait:
            status = await _wait_with_progress(services, run_id, args.wait)
            print(json.dumps(status, indent=2, default=str))
    finally:
        await services.close()
    return 0


async def _wait_with_progress(services: Any, run_id: str, timeout: float) -> dict[str, Any]:
    """Poll the run until it leaves running (or the timeout), showing its progress on stderr."""
    import time

    from .progress import ProgressDisplay, progress_of

    adapter = services.adapter
    deadline = time.monotonic() + timeout
    with ProgressDisplay() as display:
        while True:
            status = await adapter.run_result(run_id) or {"runId": run_id, "status": "unknown"}
            display.update(progress_of(await adapter.run_store.load(run_id), str(status.get("status"))))
            if status.get("status") != "running":
                return {k: v for k, v in status.items() if not k.startswith("_")}
            if time.monotonic() >= deadline:
                return {**status, "status": "timeout", "reason": f"run still running after {timeout:g}s"}
            await asyncio.sleep(0.5)


async def _cmd_runs(args: argparse.Namespace) -> int:
    """runs list|show|history|purge against the Azure settings, printing the HTTP API's JSON."""
    from . import http_api
    from .protocols import RunQuery

    services = await _services(Settings.from_env())
    try:
        if args.action == "list":
            query = RunQuery(statuses=tuple(s for v in args.status or [] for s in v.split(",") if s),
                                      blueprint_id=args.blueprint)
            status, body = await http_api.list_runs_page(services, query, args.top, args.continuation_token)
        elif args.action == "show":
            status, body = await http_api.get_run(services, args.run_id)
        elif args.action == "history":
            status, body = await http_api.run_history(services, args.run_id)
        else:
            status, body = await http_api.purge(services, args.run_id)
    except Exception as exc:
        status, body = http_api.error_result(exc) if not isinstance(exc, http_api.ApiError) else exc.result()
    finally:
        await services.close()
    print(json.dumps(dict(body), indent=2, default=str))
    return 0 if status < 400 else 1


async def _cmd_status(args: argparse.Namespace) -> int:
    services = await _services(Settings.from_env())
    try:
        status = await services.adapter.run_result(args.run_id)
    finally:
        await services.close()
    if status is None:
        print(json.dumps({"error": "not_found", "detail": f"run {args.run_id!r} does not exist"}))
        return 1
    print(json.dumps({k: v for k, v in status.items() if not k.startswith("_")}, indent=2, default=str))
    return 0


async def _cmd_reconcile(args: argparse.Namespace) -> int:
    services = await _services(Settings.from_env())
    try:
        if args.run_id:
            print(json.dumps({"runId": args.run_id, "enqueued": await services.adapter.reconcile(args.run_id)}))
        else:
            print(json.dumps((await services.reconciler.run()).to_dict()))
    finally:
        await services.close()
    return 0


def build_parser(prog: str = "python -m flowcraft_core") -> argparse.ArgumentParser:
    """The argument parser of ``python -m flowcraft_core`` (also installed as the ``flowcraft`` command)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a blueprint in process and print the result")
    run.add_argument("blueprint", help="blueprint file, or id in the workflows module")
    run.add_argument("--context", help="initial context as JSON, or @file.json")
    run.add_argument("--workflows", default="workflows", help="module exposing registry and blueprints")
    run.add_argument("--key", help="print only this context key of the result")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="do not show nodes done/running/waiting on stderr while the run goes")

    validate = sub.add_parser("validate", help="lint blueprint files; exit 1 on any problem")
    validate.add_argument("path")
    validate.add_argument("--workflows", help="check `uses` against this module's registry")

    graph = sub.add_parser("graph", help="print a Mermaid diagram of blueprints")
    graph.add_argument("path", help="file, folder or blueprint id")
    graph.add_argument("--workflows", default="workflows")

    worker = sub.add_parser("worker", help="standalone worker polling the job queue (settings from env)")
    worker.add_argument("--concurrency", type=int, help="jobs at once (FLOWCRAFT_WORKER_CONCURRENCY)")
    worker.add_argument("--no-reconcile", dest="reconcile", action="store_false",
                        help="do not run the reconciler from this worker")

    start = sub.add_parser("start", help="start a distributed run")
    start.add_argument("blueprint")
    start.add_argument("--context")
    start.add_argument("--run-id")
    start.add_argument("--wait", type=float, help="wait up to this many seconds and print the status")

    status = sub.add_parser("status", help="print a run's status item")
    status.add_argument("run_id")

    runs = sub.add_parser("runs", help="list, show, trace or purge distributed runs (settings from env)")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    runs_list = runs_sub.add_parser("list", help="a page of runs, newest first")
    runs_list.add_argument("--status", action="append", help="status filter (repeatable or comma-separated)")
    runs_list.add_argument("--blueprint", help="only runs of this blueprint")
    runs_list.add_argument("--top", type=int, default=20, help="page size (1-1000)")
    runs_list.add_argument("--continuation-token", help="the previous page's continuationToken")
    for name, text in (("show", "a run's status and result"), ("history", "a run's node executions"),
                       ("purge", "delete an ended run from Cosmos DB and Redis")):
        runs_sub.add_parser(name, help=text).add_argument("run_id")

    reconcile = sub.add_parser("reconcile", help="reconcile one run, or every stalled run")
    reconcile.add_argument("run_id", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    # The console script `flowcraft` and `python -m flowcraft_core` run the same parser, named as invoked.
    prog = "flowcraft" if Path(sys.argv[0]).stem == "flowcraft" else "python -m flowcraft_core"
    args = build_parser(prog).parse_args(argv)
    # In-process commands print their result on stdout; their progress logs are noise unless asked for.
    quiet = args.command in ("run", "validate", "graph", "status", "start", "runs")
    level = logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("azure", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handlers: dict[str, Any] = {"run": _cmd_run, "worker": _cmd_worker, "start": _cmd_start,
                                "status": _cmd_status, "reconcile": _cmd_reconcile, "runs": _cmd_runs}
    try:
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "graph":
            return _cmd_graph(args)
        code: int = asyncio.run(handlers[args.command](args))
        return code
    except BlueprintError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FlowcraftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
