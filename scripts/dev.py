"""make dev: serve the Functions app on localhost against local emulators until Ctrl-C.

Without Core Tools this is how the app runs locally: the local host drives function_app.py's
registered functions (HTTP under /api, the job and poison queues, the reconciler timer) as the Functions
host would. With Core Tools installed, `func start` against the same emulators works too (README).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowcraft_dev.emulators import Emulators  # noqa: E402


def main() -> int:
    """Start emulators and the local host; returns the host's exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--require-keys", action="store_true",
                        help="require FLOWCRAFT_FUNCTION_KEY on FUNCTION-level routes (default: not, as `func start`)")
    args = parser.parse_args()
    key = os.environ.get("FLOWCRAFT_FUNCTION_KEY", "local-dev-key")

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM both stop the host and then the emulators (a background start ignores SIGINT).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    with Emulators(repo_root=ROOT) as emu:
        env_file = ROOT / ".emulators" / "env"
        env_file.parent.mkdir(exist_ok=True)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in emu.env().items()))
        env = {**os.environ, **emu.env(), "FLOWCRAFT_CREATE_RESOURCES": "true", "FLOWCRAFT_FUNCTION_KEY": key,
               "PYTHONPATH": str(ROOT)}
        print(f"emulator settings written to {env_file} (use them for `func start` or the worker)")
        print(f"try: curl -s -X POST localhost:{args.port}/api/runs "
              "-d '{\"blueprintId\":\"400\",\"context\":{\"userId\":\"user-456\",\"userPost\":\"my email is "
              "a@b.com\"}}'", flush=True)
        command = [sys.executable, "-m", "scripts.devhost", "--port", str(args.port)]
        if not args.require_keys:
            command.append("--no-auth")
        host = subprocess.Popen(command, cwd=ROOT, env=env)
        try:
            return host.wait()
        except KeyboardInterrupt:
            host.send_signal(signal.SIGINT)
            return host.wait(timeout=30)
        finally:
            env_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
