"""make demo: run the content-moderation workflow end to end on local emulators, over HTTP.

Starts Azurite, the Cosmos DB stand-in and a private redis-server on free ports, serves the Functions
app with the local host (as `func start` would), POSTs a run, polls it to completion, prints the
moderation result, and stops everything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowcraft_dev.emulators import Emulators  # noqa: E402

FUNCTION_KEY = "demo-key"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request with the function key; returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - a localhost URL we built
                                 headers={"content-type": "application/json", "x-functions-key": FUNCTION_KEY})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - a localhost URL we built
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> int:
    """Run the demo; returns the exit code."""
    sys.path.insert(0, str(ROOT))
    import workflows

    use_case = workflows.use_cases["4.content-moderation"]
    print("demo: starting local emulators (Azurite, Cosmos DB stand-in, redis-server)...", flush=True)
    with Emulators(repo_root=ROOT) as emu:
        port = free_port()
        env = {**os.environ, **emu.env(), "FLOWCRAFT_CREATE_RESOURCES": "true",
               "FLOWCRAFT_FUNCTION_KEY": FUNCTION_KEY, "PYTHONPATH": str(ROOT)}
        # The host's own log would drown the demo's few lines: keep it in a file and point at it on failure.
        log_path = ROOT / ".emulators" / "demo-host.log"
        log_path.parent.mkdir(exist_ok=True)
        log = log_path.open("w")
        host = subprocess.Popen([sys.executable, "-m", "scripts.devhost", "--port", str(port)],
                                cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"demo: app log in {log_path.relative_to(ROOT)}", flush=True)
        try:
            base = f"http://127.0.0.1:{port}/api"
            wait_for(lambda: call("GET", f"{base}/health")[0] == 200, 60, "the app to answer /api/health")
            print(f"demo: app serving on {base}", flush=True)
            status, started = call("POST", f"{base}/runs", {"blueprintId": use_case["entryWorkflowId"],
                                                            "context": use_case["initialContext"]})
            if status != 202:
                print(f"demo: POST /api/runs answered {status}: {started}", file=sys.stderr)
                return 1
            run_id = started["runId"]
            print(f"demo: started run {run_id} of blueprint {use_case['entryWorkflowId']}; polling "
                  f"{started['statusUrl']}", flush=True)

            def finished() -> Any:
                code, body = call("GET", f"{base}/runs/{run_id}")
                return body if code == 200 and body["status"] not in ("running",) else None

            final = wait_for(finished, 120, "the run to finish")
            print(f"demo: run {run_id} {final['status'].upper()}")
            if final["status"] != "completed":
                print(f"demo: reason: {final.get('reason')}", file=sys.stderr)
                return 1
            print("\n" + str(final["result"]["context"].get("final_output")) + "\n")
            return 0
        finally:
            os.killpg(host.pid, signal.SIGTERM)
            try:
                host.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(host.pid, signal.SIGKILL)
            log.close()


if __name__ == "__main__":
    sys.exit(main())
