"""Start and stop the local Azure stand-ins on free ports.

Used by the test suite (``tests/conftest.py``) and by ``make demo``/``make dev`` through the CLI::

    python -m flowcraft_dev.emulators start --env-file .emulators/env

Three processes are started, each in its own process group so that ``stop()`` also reaps anything
they fork:

* Azurite's queue service (npm ``azurite``, ``node_modules/.bin/azurite-queue``),
* the Cosmos DB stand-in (npm ``@vercel/cosmosdb-server``; HTTPS with a self-signed certificate),
* a private ``redis-server`` with persistence off (never the machine's own Redis on 6379).

Every port is picked free at start time, so several test sessions (or a test session next to
``make dev``) can run side by side. Readiness is probed with a real request and a deadline rather
than a sleep, and a process that dies while starting is reported with the tail of its output.

This module deliberately has no pytest dependency: the CLI and the fixtures share it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "COSMOS_EMULATOR_KEY",
    "COSMOS_LAUNCHER",
    "EmulatorError",
    "Emulators",
    "ensure_node_modules",
    "find_repo_root",
    "free_port",
    "require_redis_server",
]

log = logging.getLogger(__name__)

# Azurite's fixed development account. The key is the documented, public well-known key of the
# storage emulator; it protects nothing.
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# The Cosmos stand-in accepts any key, but the SDK insists on valid base64 to sign requests; this is
# the public key of Microsoft's Cosmos DB emulator, so it is recognisably "not a secret".
COSMOS_EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="

# What `npm ci` must have produced for us to skip running it.
_REQUIRED_NODE_BINS = ("azurite-queue", "cosmosdb-server")
_NODE_HINT = "install Node.js 20+ and npm (e.g. `apt-get install nodejs npm`)"
# Launcher for the Cosmos stand-in, relative to the repository root.
COSMOS_LAUNCHER = Path("scripts/cosmosdb-server.js")
_LOCALHOST = "127.0.0.1"
# A port picked free can be taken by someone else before the child binds it; retry a few times.
_PORT_ATTEMPTS = 3
_ADDR_IN_USE_MARKERS = ("EADDRINUSE", "Address already in use")
_POLL_INTERVAL = 0.05
_LOG_TAIL_BYTES = 4000


class EmulatorError(RuntimeError):
    """An emulator (or a tool it needs) is missing or could not start."""


def _die_with_parent_hook() -> Callable[[], None] | None:
    """On Linux, a hook that makes an emulator die with the process that started it.

    A test process killed with SIGKILL (a mutmut timeout, a CI cancel) runs no cleanup, and its emulators
    would live on, holding ports and memory. PR_SET_PDEATHSIG fires when the starting *thread* ends, so
    it is used only from the main thread, which lives as long as the process.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def find_repo_root(start: Path | None = None) -> Path:
    """Find the directory holding the emulators' ``package.json``.

    Defaults to walking up from this file (``flowcraft_dev/``), so it works from any cwd.
    """
    here = (start or Path(__file__)).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / "package.json").is_file() and (candidate / "flowcraft_core").is_dir():
            return candidate
    raise EmulatorError(f"could not find the repository root (package.json) above {here}")


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EmulatorError(f"`{name}` is not on PATH; {hint}")
    return path


def require_redis_server() -> str:
    """Return the path of ``redis-server`` or explain how to install it."""
    return _require_tool(
        "redis-server",
        "install it with `apt-get install redis-server` (only the binary is used: the tests start "
        "their own server on a free port and never touch the system one)",
    )


def _node_modules_complete(repo_root: Path) -> bool:
    bin_dir = repo_root / "node_modules" / ".bin"
    return all((bin_dir / name).exists() for name in _REQUIRED_NODE_BINS)


def _node_modules_current(repo_root: Path) -> bool:
    """True when node_modules has the emulators and was installed after the last lockfile change.

    npm records what it installed in node_modules/.package-lock.json; a package-lock.json newer than
    that (a pulled version bump) means node_modules is stale and `npm ci` must run again.
    """
    if not _node_modules_complete(repo_root):
        return False
    lock = repo_root / "package-lock.json"
    installed = repo_root / "node_modules" / ".package-lock.json"
    if not lock.is_file():
        return True
    return installed.is_file() and installed.stat().st_mtime >= lock.stat().st_mtime


def ensure_node_modules(repo_root: Path) -> None:
    """Install the npm emulators (Azurite, cosmosdb-server) unless ``node_modules`` has them."""
    # The emulators are node programs: node is needed even when node_modules is already there.
    _require_tool("node", _NODE_HINT)
    if _node_modules_current(repo_root):
        return
    npm = _require_tool("npm", _NODE_HINT)
    # `npm ci` reproduces package-lock.json exactly; fall back to `install` when there is no lock.
    verb = "ci" if (repo_root / "package-lock.json").is_file() else "install"
    cmd = [npm, verb, "--no-audit", "--no-fund"]
    log.info("installing the npm emulators: %s (takes about a minute)", " ".join(cmd))
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not _node_modules_complete(repo_root):
        output = (result.stdout + result.stderr)[-_LOG_TAIL_BYTES:]
        raise EmulatorError(
            f"`{' '.join(cmd)}` in {repo_root} did not install the emulators (exit {result.returncode}):\n{output}"
        )


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no output captured>"
    text = data[-_LOG_TAIL_BYTES:].decode("utf-8", errors="replace").strip()
    return text or "<no output>"


# --- readiness probes: each does one real request and returns True once the service answers ---


def _probe_azurite(port: int) -> bool:
    # Any HTTP answer (403 for an unsigned request) means the queue service is serving.
    conn = http.client.HTTPConnection(_LOCALHOST, port, timeout=2)
    try:
        conn.request("GET", f"/{AZURITE_ACCOUNT_NAME}?comp=list")
        return conn.getresponse().status > 0
    finally:
        conn.close()


def _probe_cosmos(port: int) -> bool:
    # The stand-in serves a self-signed certificate; this probe only checks liveness.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(_LOCALHOST, port, timeout=2, context=ctx)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _probe_redis(port: int) -> bool:
    with socket.create_connection((_LOCALHOST, port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


@dataclass(frozen=True)
class _Spec:
    name: str
    argv_for: Callable[[int], Sequence[str]]
    probe: Callable[[int], bool]


@dataclass
class _Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


@dataclass
class Emulators:
    """The three local services, started on free ports.

    Use as a context manager, or call ``start()`` and ``stop()``. ``stop()`` is idempotent and is
    also run when ``start()`` fails half-way, so no orphan process survives a failed start.
    """

    repo_root: Path | None = None
    startup_timeout: float = 60.0
    install_node_modules: bool = True
    _services: dict[str, _Service] = field(default_factory=dict, init=False, repr=False)
    _workdir: Path | None = field(default=None, init=False, repr=False)

    # --- lifecycle ---

    def start(self) -> Self:
        if self._services:
            raise EmulatorError("emulators already started")
        root = self.repo_root or find_repo_root()
        self.repo_root = root
        if self.install_node_modules:
            ensure_node_modules(root)
        node = _require_tool("node", _NODE_HINT)
        if not (root / COSMOS_LAUNCHER).is_file():
            raise EmulatorError(f"{root / COSMOS_LAUNCHER} is missing")
        redis_server = require_redis_server()
        self._workdir = Path(tempfile.mkdtemp(prefix="flowcraft-emulators-"))
        bin_dir = root / "node_modules" / ".bin"
        try:
            azurite_dir = self._workdir / "azurite"
            azurite_dir.mkdir()
            redis_dir = self._workdir / "redis"
            redis_dir.mkdir()
            self._launch_all(
                [
                    _Spec(
                        "azurite-queue",
                        lambda port: [
                            str(bin_dir / "azurite-queue"),
                            "--silent",
                            "--skipApiVersionCheck",
                            "--disableTelemetry",
                            "--location",
                            str(azurite_dir),
                            "--queueHost",
                            _LOCALHOST,
                            "--queuePort",
                            str(port),
                        ],
                        _probe_azurite,
                    ),
                    _Spec(
                        "cosmosdb-server",
                        # Our launcher rather than the package's CLI: it fixes 404s, patch
                        # filter predicates and keep-alive (see the script's header).
                        lambda port: [
                            node,
                            str(root / COSMOS_LAUNCHER),
                            "--host",
                            _LOCALHOST,
                            "--port",
                            str(port),
                        ],
                        _probe_cosmos,
                    ),
                    _Spec(
                        "redis-server",
                        lambda port: [
                            redis_server,
                            "--port",
                            str(port),
                            "--bind",
                            _LOCALHOST,
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(redis_dir),
                        ],
                        _probe_redis,
                    ),
                ]
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in reversed(list(self._services.values())):
            _terminate(service)
        self._services.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what callers use ---

    def _port(self, name: str) -> int:
        try:
            return self._services[name].port
        except KeyError:
            raise EmulatorError(f"{name} is not running: call start() first") from None

    @property
    def queue_port(self) -> int:
        return self._port("azurite-queue")

    @property
    def cosmos_port(self) -> int:
        return self._port("cosmosdb-server")

    @property
    def redis_port(self) -> int:
        return self._port("redis-server")

    @property
    def queue_connection_string(self) -> str:
        # Explicit endpoint: `UseDevelopmentStorage=true` would point at the default port 10001.
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
            f"AccountKey={AZURITE_ACCOUNT_KEY};"
            f"QueueEndpoint=http://{_LOCALHOST}:{self.queue_port}/{AZURITE_ACCOUNT_NAME};"
        )

    @property
    def cosmos_connection_string(self) -> str:
        return f"AccountEndpoint=https://{_LOCALHOST}:{self.cosmos_port}/;AccountKey={COSMOS_EMULATOR_KEY};"

    @property
    def redis_url(self) -> str:
        return f"redis://{_LOCALHOST}:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        """The app settings that point the project at these emulators."""
        return {
            "AzureWebJobsStorage": self.queue_connection_string,
            "COSMOS_DB_CONNECTION_STRING": self.cosmos_connection_string,
            # The stand-in's certificate is self-signed; production keeps the default (verify).
            "COSMOS_DB_VERIFY_TLS": "false",
            "REDIS_URL": self.redis_url,
        }

    def dead_services(self) -> list[str]:
        """Names of started services whose process has exited (for supervisors such as the CLI)."""
        return [s.name for s in self._services.values() if s.process.poll() is not None]

    def log_tail(self, name: str) -> str:
        return _tail(self._services[name].log_path)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, with reaped children) each running service has used so far (Linux)."""
        return {name: _cpu_seconds(s.process.pid) for name, s in self._services.items()
                if s.process.poll() is None}

    # --- internals ---

    def _launch_all(self, specs: Sequence[_Spec]) -> None:
        """Spawn every service first, then wait for each: the start-up times overlap."""
        pending = {spec.name: (spec, self._spawn(spec, attempt=1)) for spec in specs}
        for name, (spec, service) in pending.items():
            attempt = 1
            while True:
                try:
                    self._wait_ready(service, spec.probe)
                    break
                except EmulatorError:
                    _terminate(service)
                    del self._services[name]
                    lost_port_race = any(m in _tail(service.log_path) for m in _ADDR_IN_USE_MARKERS)
                    if not lost_port_race or attempt >= _PORT_ATTEMPTS:
                        raise
                    # Someone took the port between free_port() and the bind: pick another one.
                    attempt += 1
                    service = self._spawn(spec, attempt)

    def _spawn(self, spec: _Spec, attempt: int) -> _Service:
        assert self._workdir is not None
        port = free_port()
        log_path = self._workdir / f"{spec.name}.{attempt}.log"
        log_file = log_path.open("wb")
        try:
            # stdout/stderr go to a file, not a pipe: nobody reads a pipe while tests run, and a
            # full pipe would block the emulator. start_new_session gives it its own process group
            # so stop() can kill node's children too, and a Ctrl-C on the terminal does not reach
            # it before the CLI stops it in order.
            process = subprocess.Popen(
                list(spec.argv_for(port)),
                cwd=self.repo_root,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        except OSError as exc:
            log_file.close()
            raise EmulatorError(f"could not run {spec.name}: {exc}") from exc
        service = _Service(spec.name, port, process, log_path, log_file)
        self._services[spec.name] = service
        return service

    def _wait_ready(self, service: _Service, probe: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_probe_error = "no attempt"
        while True:
            code = service.process.poll()
            if code is not None:
                raise EmulatorError(
                    f"{service.name} exited with code {code} while starting on port {service.port}; "
                    f"its output ends with:\n{_tail(service.log_path)}"
                )
            try:
                if probe(service.port):
                    return
                last_probe_error = "unexpected answer"
            except OSError as exc:  # refused / reset / timeout while it is still starting
                last_probe_error = repr(exc)
            if time.monotonic() >= deadline:
                raise EmulatorError(
                    f"{service.name} did not answer on port {service.port} within "
                    f"{self.startup_timeout:.0f}s (last probe: {last_probe_error}); its output ends "
                    f"with:\n{_tail(service.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, from /proc (0.0 where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: the fields after it start past its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _terminate(service: _Service, grace: float = 5.0) -> None:
    """SIGTERM the service's process group, SIGKILL it if it lingers, then close its log."""
    proc = service.process
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The group id is the child's pid because it was started with start_new_session.
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    # Reap any stragglers left in the group (e.g. a grandchild that ignored SIGTERM).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    service.log_file.close()


# --- CLI ---


def _format_env(env: dict[str, str], fmt: str) -> str:
    if fmt == "plain":
        return "".join(f"{key}={value}\n" for key, value in env.items())
    # Connection strings contain `;`: unquoted, `. env-file` in a shell would split them into
    # several commands and silently keep only the first segment. shlex quoting is also read
    # correctly by python-dotenv.
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items())


def _write_atomically(path: Path, text: str) -> None:
    # Written only once every service answers, and renamed into place, so a script that waits for
    # the file to exist never reads a half-written one or one pointing at a port not yet open.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _cmd_start(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    env_file: Path | None = args.env_file
    emulators = Emulators(repo_root=args.repo_root, startup_timeout=args.timeout)
    try:
        emulators.start()
    except EmulatorError as exc:
        print(f"emulators: {exc}", file=sys.stderr)
        return 1
    exit_code = 0
    try:
        text = _format_env(emulators.env(), args.format)
        if env_file is not None:
            _write_atomically(env_file, text)
        sys.stdout.write(text)
        print("emulators: ready; Ctrl-C or SIGTERM stops them", file=sys.stderr, flush=True)
        sys.stdout.flush()
        while not stop_requested.wait(1.0):
            dead = emulators.dead_services()
            if dead:
                for name in dead:
                    print(f"emulators: {name} died:\n{emulators.log_tail(name)}", file=sys.stderr)
                exit_code = 1
                break
    finally:
        emulators.stop()
        # A stale env file would point the next command at closed ports.
        if env_file is not None:
            env_file.unlink(missing_ok=True)
        print("emulators: stopped", file=sys.stderr)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowcraft_dev.emulators",
        description="Run Azurite (queues), the Cosmos DB stand-in and a private Redis on free ports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start all three and stay in the foreground until SIGINT/SIGTERM")
    start.add_argument(
        "--env-file",
        type=Path,
        help="write the app settings here as KEY=VALUE lines once everything is ready (removed on exit)",
    )
    start.add_argument(
        "--format",
        choices=("shell", "plain"),
        default="shell",
        help="shell: values shell-quoted, safe for `set -a; . FILE` and dotenv (default); "
        "plain: raw KEY=VALUE, e.g. for Make's `include`",
    )
    start.add_argument("--repo-root", type=Path, default=None, help="where package.json/node_modules live")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each service")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="emulators: %(message)s")
    if args.command == "start":
        return _cmd_start(args)
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
