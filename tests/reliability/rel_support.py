"""Tools of the reliability tests: a worker harness, a private redis-server, and fault proxies.

- ``RelHarness`` builds the production wiring (``build_services(Settings)``) for one test and counts what
  the engine guarantees: successful final-status writes per run (``finals``), node executions per run
  (``rel_workflows.LOCAL_EXECUTIONS``), committed record items per node (``records``).
- ``PrivateRedis`` is a redis-server of the test's own (so restarting it never disturbs the session's),
  optionally with a password or with persistence.
- ``TcpProxy`` forwards a port and can be paused (connections cut, new ones refused) and resumed.
- ``CosmosFaultProxy`` is an HTTPS reverse proxy (its own self-signed certificate) in front of the Cosmos
  DB stand-in that answers the next N document requests with 429 (``x-ms-retry-after-ms``) or 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from helpers import AzureTestEnv, wait_until
from rel_workflows import LOCAL_EXECUTIONS, final_key

from flowcraft_core.azure.services import AzureServices
from flowcraft_core.engine import EngineOptions
from flowcraft_core.protocols import FINAL_STATUSES
from flowcraft_dev.emulators import free_port
from tests.integration.harness import Distributed

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
class RelHarness(Distributed):
    """The integration suite's worker builder, plus final-status counting and worker knobs for faults."""

    def __init__(self, env: AzureTestEnv) -> None:
        super().__init__(env)
        # Successful final-status writes per run id, in this process (see count_finals).
        self.finals: Counter[str] = Counter()

    @property
    def prefix(self) -> str:
        """The Redis key prefix of this test (removed by the azure_env fixture afterwards)."""
        return self.env.redis_prefix

    def settings_env(self, **overrides: str) -> dict[str, str]:
        """App settings (environment names) for this test's queue, database and Redis."""
        return self.env.settings(COSMOS_DB_DATABASE=self.env.cosmos_database, FLOWCRAFT_CREATE_RESOURCES="true",
                                 **overrides)

    def context(self, token: str, **extra: Any) -> dict[str, Any]:
        """An initial context: the run's token and the counter prefix the test nodes count under."""
        return {"token": token, "counterPrefix": self.prefix, **extra}

    async def build(self, registry: Mapping[str, Any], blueprints: Mapping[str, Any], *, start: bool = True,
                    event_bus: Any = None, engine: EngineOptions | None = None,
                    env: Mapping[str, str] | None = None, concurrency: int | None = None,
                    visibility_timeout: int | None = None, count_in_redis: bool = True,
                    **overrides: str) -> AzureServices:
        """Build (and by default start) a worker; overrides are settings by environment name.

        Final-status writes are counted in ``self.finals`` and, unless count_in_redis is False (tests that
        take Redis away), in Redis too.
        """
        services = await super().build(registry, blueprints, start=False, event_bus=event_bus, engine=engine,
                                       env=env, **overrides)
        worker = services.adapter.worker_options
        if concurrency is not None:
            worker.concurrency = concurrency
        if visibility_timeout is not None:
            worker.visibility_timeout = visibility_timeout
        count_finals(services, self.finals, redis_prefix=self.prefix if count_in_redis else None)
        if start:
            await services.adapter.start()
        return services

    async def stop(self, services: AzureServices) -> None:
        """Stop one worker's polling (its clients stay open until close())."""
        await services.adapter.stop(timeout=5)


def count_finals(services: AzureServices, finals: Counter[str], redis_prefix: str | None = None) -> None:
    """Count successful final-status writes per run (in a Counter, and in Redis when a prefix is given).

    ``finalize`` is ETag-guarded and returns True only for the write that made the run final: the
    count must end at exactly one per run, whatever crashed or was delivered twice.
    """
    store = services.adapter.status_store
    original = store.finalize

    async def finalize(run_id: str, status: Any, **kwargs: Any) -> bool:
        done = await original(run_id, status, **kwargs)
        if done:
            finals[run_id] += 1
            if redis_prefix is not None:
                await services.redis.incr(final_key(redis_prefix, run_id))
        return done

    store.finalize = finalize  # type: ignore[method-assign]


def executions(run_id: str) -> Counter[str]:
    """Node executions of a run in this process (test nodes count them in rel_workflows)."""
    return Counter({node: n for (rid, node), n in LOCAL_EXECUTIONS.items() if rid == run_id})


async def records(services: AzureServices, run_id: str) -> Counter[str]:
    """Committed record items per node key of a run, read straight from the contexts container."""
    found: Counter[str] = Counter()
    container = services.adapter.run_store.container
    async for item in container.query_items(
            "SELECT c.key FROM c WHERE c.runId = @runId AND c.kind = 'record'",
            parameters=[{"name": "@runId", "value": run_id}], partition_key=run_id):
        found[str(item["key"])] += 1
    return found


async def wait_final(services: AzureServices, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait (with a deadline) until the run's status item is final; return it with the full context."""
    async def final() -> dict[str, Any] | None:
        status = await services.adapter.get_status(run_id)
        return status if status is not None and status.get("status") in FINAL_STATUSES else None

    await wait_until(final, timeout=timeout, interval=0.1, message=f"run {run_id} final")
    result = await services.adapter.run_result(run_id)
    assert result is not None
    return result


# --- a private redis-server ---------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server on a fixed free port that a test may stop and start again."""

    def __init__(self, workdir: Path, *, password: str | None = None, persistent: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The redis:// URL (with the password, when there is one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.persistent else "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"redis-{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server (it writes its append-only file when persistent) and wait for it to exit."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


# --- a pausable TCP proxy -------------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``pause()`` cuts every connection and refuses new ones."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        """Listen (again) on the proxy's port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def pause(self) -> None:
        """Stop listening and cut every open connection: the target looks unreachable."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        self._writers.clear()

    async def resume(self) -> None:
        """Accept connections again."""
        await self.start()

    async def close(self) -> None:
        """Stop for good."""
        await self.pause()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        tasks = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._pipes.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._pipes.difference_update(tasks)
            for w in (writer, up_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()


# --- an HTTPS fault proxy for Cosmos DB -----------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1 (PEM files in directory)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "proxy.crt", directory / "proxy.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding",
                "accept-encoding"}


class CosmosFaultProxy:
    """HTTPS reverse proxy in front of the Cosmos DB stand-in that fails the next N document requests."""

    def __init__(self, upstream_port: int, workdir: Path) -> None:
        self.upstream = f"https://127.0.0.1:{upstream_port}"
        self.port = free_port()
        self.workdir = workdir
        # (status, retry-after ms, only queries?) per request to fail, in order
        self.pending: list[tuple[int, float | None, bool]] = []
        self.injected: Counter[int] = Counter()
        self.forwarded = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def connection_string(self, key: str) -> str:
        """A Cosmos connection string pointing at the proxy."""
        return f"AccountEndpoint=https://127.0.0.1:{self.port}/;AccountKey={key};"

    def fail_next(self, status: int, count: int, retry_after_ms: float | None = None, *,
                  queries_only: bool = False) -> None:
        """Answer the next `count` document requests (or queries only) with `status` instead of forwarding."""
        self.pending.extend([(status, retry_after_ms, queries_only)] * count)

    async def start(self) -> None:
        """Listen with a fresh self-signed certificate."""
        cert, key = self_signed_cert(self.workdir)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                              auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls).start()

    async def close(self) -> None:
        """Stop the proxy."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        is_query = request.headers.get("x-ms-documentdb-isquery", "").lower() == "true"
        if "/docs" in request.path and self.pending and (is_query or not self.pending[0][2]):
            status, retry_after, _ = self.pending.pop(0)
            self.injected[status] += 1
            headers = {"x-ms-activity-id": "00000000-0000-0000-0000-000000000000"}
            if retry_after is not None:
                headers["x-ms-retry-after-ms"] = str(int(retry_after))
                headers["x-ms-substatus"] = "3200"
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            return web.json_response({"code": code, "message": f"injected by the test proxy ({status})"},
                                     status=status, headers=headers)
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=body if body else None) as upstream:
            data = await upstream.read()
            self.forwarded += 1
            if request.path == "/":
                # The account document names the endpoints to use: point them at the proxy, or the SDK
                # would send everything after discovery straight to the stand-in.
                data = data.replace(self.upstream.removeprefix("https://").encode(),
                                    f"127.0.0.1:{self.port}".encode())
                data = data.replace(f"localhost:{self.upstream.rsplit(':', 1)[1]}".encode(),
                                    f"127.0.0.1:{self.port}".encode())
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=data, headers=out)


# --- worker subprocesses ---------------------------------------------------------------------------------


def worker_env(settings: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: ours, the app settings, and the test's extras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWCRAFT_", "REL_"))}
    env.update(settings)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO_ROOT / "tests"), str(REPO_ROOT)])
    env["FLOWCRAFT_WORKFLOWS"] = "rel_workflows"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


async def spawn_worker(env: Mapping[str, str], log_path: Path) -> asyncio.subprocess.Process:
    """Start rel_worker.py (the production adapter with test knobs) writing its log to log_path."""
    with open(log_path, "wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "rel_worker.py"), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT), start_new_session=True)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM (then SIGKILL) a subprocess we started; returns its exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode
