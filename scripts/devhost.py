"""A local stand-in for the Azure Functions host: serves function_app.py's functions as the host would.

Core Tools cannot be installed everywhere (its npm package downloads the host from a CDN), so this
module drives the functions that ``app.get_functions()`` reports, with the same inputs the host builds:

- HTTP triggers under ``/<routePrefix>/`` (aiohttp), as ``func.HttpRequest`` objects; auth level
  ``function``/``admin`` requires a key (``x-functions-key`` header or ``code`` query parameter) equal
  to ``FLOWCRAFT_FUNCTION_KEY``.
- Queue triggers polling Azurite (``%SETTING%`` names resolved from the settings) the way the host's
  queue listener does: batches of ``batchSize``, a new batch when in-flight work drops to
  ``newBatchThreshold``, base64 ``messageEncoding``, lease renewal while a function runs, delete on
  success, visible again after ``visibilityTimeout`` on failure, moved to ``<queue>-poison`` after
  ``maxDequeueCount`` deliveries, randomized backoff up to ``maxPollingInterval`` on an empty queue.
- Timer triggers on their NCRONTAB schedule (six fields, seconds first), one invocation at a time.

Run: ``python -m scripts.devhost --port 7071 [--env-file .emulators/env]``. Settings come from the
environment, then ``--env-file`` files (which override it), then ``local.settings.json`` Values (which
only fill gaps). Only this dev tool imports azure.functions inside flowcraft_core.

Differences from the real host (on purpose, for local work): queues a trigger names are created when
missing (Azurite starts empty); a missing ``%SETTING%`` falls back to the Settings default with a
warning (the host refuses to start); 401/404 answers carry a JSON error body (the host's are empty).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import importlib
import inspect
import json
import logging
import os
import random
import re
import shlex
import signal
import sys
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import azure.functions as func
from aiohttp import web
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue.aio import QueueClient
from pydantic import ValidationError

from flowcraft_core.settings import Settings

logger = logging.getLogger("flowcraft.devhost")

# The host's queue listener: first retry after 100 ms, doubling (randomized) up to maxPollingInterval.
MIN_POLLING_INTERVAL = 0.1
# The host receives queue messages with a 10-minute lease and renews it at half-time while the function
# runs; a host that dies mid-function therefore lets the message reappear after at most 10 minutes.
DEFAULT_LEASE_SECONDS = 600
# The Functions host answers 413 above 100 MB; smaller limits are the app's business (FLOWCRAFT_MAX_REQUEST_BYTES).
MAX_HTTP_BODY_BYTES = 100 * 1024 * 1024
FUNCTION_KEY_HEADER = "x-functions-key"
FUNCTION_KEY_QUERY = "code"


class DevHostError(Exception):
    """The app or its configuration cannot be hosted (unknown setting, unsupported binding...)."""


# ------------------------------------------------------------------------------------------ configuration
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)$")


def parse_timespan(value: str | float | int | None) -> float | None:
    """Seconds of a .NET TimeSpan ("00:00:02", "1.00:00:00"); None for unset or "-1" (no limit)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if text in ("", "-1"):
        return None
    match = _TIMESPAN.match(text)
    if not match:
        raise DevHostError(f"not a TimeSpan (d.hh:mm:ss or hh:mm:ss): {value!r}")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class QueueOptions:
    """host.json ``extensions.queues`` (defaults are the host's for one vCPU)."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostOptions:
    """What this host takes from host.json, plus its own knobs."""

    route_prefix: str = "api"
    queues: QueueOptions = field(default_factory=QueueOptions)
    function_timeout: float | None = None
    log_level: str = "INFO"
    lease_seconds: int = DEFAULT_LEASE_SECONDS

    @classmethod
    def from_host_json(cls, path: str | Path | None) -> HostOptions:
        """Read host.json (missing file: the host's defaults)."""
        if path is None or not Path(path).is_file():
            return cls()
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        ext = data.get("extensions") or {}
        q = ext.get("queues") or {}
        batch = int(q.get("batchSize", 16))
        queues = QueueOptions(
            batch_size=batch,
            new_batch_threshold=int(q.get("newBatchThreshold", batch // 2)),
            max_dequeue_count=int(q.get("maxDequeueCount", 5)),
            visibility_timeout=parse_timespan(q.get("visibilityTimeout")) or 0.0,
            max_polling_interval=parse_timespan(q.get("maxPollingInterval")) or 60.0,
            message_encoding=str(q.get("messageEncoding", "base64")).lower(),
        )
        if not 1 <= queues.batch_size <= 32:
            raise DevHostError(f"host.json queues.batchSize must be 1-32, got {queues.batch_size}")
        if queues.message_encoding not in ("base64", "none"):
            raise DevHostError(f"host.json queues.messageEncoding must be base64 or none, "
                               f"got {queues.message_encoding}")
        prefix = (ext.get("http") or {}).get("routePrefix", "api")
        level = ((data.get("logging") or {}).get("logLevel") or {}).get("default", "Information")
        return cls(route_prefix=str(prefix).strip("/"), queues=queues,
                   function_timeout=parse_timespan(data.get("functionTimeout")), log_level=_python_level(level))


def _python_level(dotnet_level: str) -> str:
    return {"trace": "DEBUG", "debug": "DEBUG", "information": "INFO", "warning": "WARNING", "error": "ERROR",
            "critical": "CRITICAL", "none": "CRITICAL"}.get(str(dotnet_level).lower(), "INFO")


def parse_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines; values may be shell-quoted (the emulators' default format); # comments."""
    values: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise DevHostError(f"{path}:{number}: expected KEY=VALUE")
        # Quoted values are read the way a shell would; bare ones are taken literally, because a plain
        # connection string (';', '=', '/') is not something shlex should take apart.
        if value[:1] in ("'", '"'):
            try:
                parts = shlex.split(value)
            except ValueError as exc:
                raise DevHostError(f"{path}:{number}: {exc}") from None
            value = parts[0] if parts else ""
        values[key.strip()] = value
    return values


def load_local_settings(path: str | Path) -> dict[str, str]:
    """The ``Values`` of a local.settings.json file, as strings."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in (data.get("Values") or {}).items()}


def _settings_defaults() -> dict[str, str]:
    defaults: dict[str, str] = {}
    for info in Settings.model_fields.values():
        if info.alias and info.default not in (None, ""):
            defaults[info.alias] = str(info.default)
    return defaults


def resolve_expression(text: str, env: Mapping[str, str]) -> str:
    """Replace every ``%NAME%`` with its setting, as the host's name resolver does (prefixes and suffixes allowed)."""
    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if env.get(name):
            return env[name]
        default = _settings_defaults().get(name)
        if default is None:
            raise DevHostError(f"app setting {name!r} (used as %{name}%) is not set")
        logger.warning("app setting %s is not set; using its default %r (the Functions host would refuse to "
                       "start: set it in local.settings.json or the app settings)", name, default)
        return default

    if text.count("%") % 2:
        raise DevHostError(f"unbalanced % in binding expression {text!r}")
    return re.sub(r"%([^%]+)%", setting, text)


# ------------------------------------------------------------------------------------------------ routes
@dataclass(frozen=True)
class RouteTemplate:
    """An ASP.NET-style route template: literals, ``{name}``, ``{name?}``, ``{name:constraint}``, ``{*rest}``."""

    template: str
    segments: tuple[tuple[str, str, bool], ...]  # (kind, text, optional); kind: literal | param | catchall

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        """Split the template into segments."""
        segments: list[tuple[str, str, bool]] = []
        for part in template.strip("/").split("/") if template.strip("/") else []:
            match = re.fullmatch(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\??)\}", part)
            if match:
                kind = "catchall" if match.group(1) else "param"
                segments.append((kind, match.group(2), bool(match.group(3)) or kind == "catchall"))
            elif "{" in part or "}" in part:
                raise DevHostError(f"route segment {part!r} of {template!r} is not supported by the local host")
            else:
                segments.append(("literal", part, False))
        return cls(template, tuple(segments))

    @property
    def specificity(self) -> tuple[int, int]:
        """Literal segments first (as ASP.NET orders routes), then longer templates."""
        return sum(1 for s in self.segments if s[0] == "literal"), len(self.segments)

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """Route values when the decoded path segments fit the template, else None."""
        values: dict[str, str] = {}
        for index, (kind, text, optional) in enumerate(self.segments):
            if kind == "catchall":
                values[text] = "/".join(parts[index:])
                return values
            if index >= len(parts):
                if optional:
                    continue
                return None
            if kind == "literal":
                if parts[index].lower() != text.lower():
                    return None
            else:
                values[text] = parts[index]
        return values if len(parts) <= len(self.segments) else None


# ------------------------------------------------------------------------------------------------ the host
@dataclass
class HostedFunction:
    """A registered function and the binding that triggers it."""

    name: str
    trigger: dict[str, Any]
    user_function: Callable[..., Any]
    route: RouteTemplate | None = None

    @property
    def kind(self) -> str:
        """The trigger's binding type (httpTrigger, queueTrigger, timerTrigger)."""
        return str(self.trigger["type"])

    @property
    def arg_name(self) -> str:
        """The parameter the trigger's value is passed as."""
        return str(self.trigger["name"])


_FUNCTIONS: dict[int, tuple[func.FunctionApp, list[HostedFunction]]] = {}


def hosted_functions(app: func.FunctionApp) -> list[HostedFunction]:
    """The app's functions with their triggers (``get_functions()`` may only be called once per app)."""
    cached = _FUNCTIONS.get(id(app))
    if cached is not None and cached[0] is app:
        return cached[1]
    result: list[HostedFunction] = []
    for fn in app.get_functions():
        bindings = json.loads(fn.get_function_json())["bindings"]
        triggers = [b for b in bindings if str(b["type"]).endswith("Trigger")]
        others = [b for b in bindings if b not in triggers and not (b["type"] == "http" and b["name"] == "$return")]
        if len(triggers) != 1 or others:
            raise DevHostError(f"function {fn.get_function_name()}: the local host supports one trigger and an "
                               f"HTTP return value, found {[b['type'] for b in bindings]}")
        trigger = triggers[0]
        if trigger["type"] not in ("httpTrigger", "queueTrigger", "timerTrigger"):
            raise DevHostError(f"function {fn.get_function_name()}: trigger {trigger['type']} is not supported")
        name = str(fn.get_function_name())
        route = RouteTemplate.parse(str(trigger.get("route") or name)) if trigger["type"] == "httpTrigger" else None
        result.append(HostedFunction(name, trigger, fn.get_user_function(), route))
    _FUNCTIONS[id(app)] = (app, result)
    return result


class BodyEncodingError(ValueError):
    """A request body that cannot be decoded as its Content-Encoding says (400), or an unknown one (415)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


def decode_body(raw: bytes, content_encoding: str | None, *, limit: int = MAX_HTTP_BODY_BYTES) -> bytes:
    """Undo the Content-Encoding codings (gzip, deflate, identity), decoding at most ``limit`` bytes."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):  # listed in the order they were applied
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            wbits = [zlib.MAX_WBITS | 16]
        elif coding == "deflate":
            wbits = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped, as the RFC says, or raw as some send
        else:
            raise BodyEncodingError(415, "unsupported_content_encoding",
                                    f"Content-Encoding {coding!r} is not supported (gzip, deflate, identity)")
        raw = _inflate(raw, coding, wbits, limit)
    return raw


def _inflate(raw: bytes, coding: str, wbits: Sequence[int], limit: int) -> bytes:
    error: Exception | None = None
    for bits in wbits:
        inflater = zlib.decompressobj(bits)
        try:
            out = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            error = exc
            continue
        if len(out) > limit or inflater.unconsumed_tail:  # a decompression bomb stops at the limit
            raise BodyEncodingError(413, "payload_too_large", f"the decoded request body exceeds {limit} bytes")
        if not inflater.eof:
            error = zlib.error("the compressed body is truncated")
            continue
        return out
    raise BodyEncodingError(400, "invalid_body_encoding",
                            f"the request body is not valid {coding} (its Content-Encoding): {error}")


def _error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


class DevHost:
    """Serves one FunctionApp: HTTP on a local port, queue listeners and timers on the running loop."""

    def __init__(self, app: func.FunctionApp, *, options: HostOptions | None = None,
                 env: Mapping[str, str] | None = None, function_key: str | None = None,
                 enforce_keys: bool = True,
                 host: str = "127.0.0.1", port: int = 7071, create_queues: bool = True,
                 on_shutdown: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
        self.app = app
        self.options = options or HostOptions()
        self._env = env
        self.function_key = (function_key if function_key is not None
                             else Settings.from_env(self.env).function_key.get_secret_value())
        # `func start` ignores auth levels locally; --no-auth does the same for `make dev`.
        self.enforce_keys = enforce_keys
        self.host = host
        self.port = port
        self.create_queues = create_queues
        self.on_shutdown = list(on_shutdown)
        self.functions = hosted_functions(app)
        self.http_functions = sorted((f for f in self.functions if f.route is not None),
                                     key=lambda f: f.route.specificity if f.route else (0, 0), reverse=True)
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._invocations: set[asyncio.Task[Any]] = set()
        self._clients: list[QueueClient] = []
        self._runner: web.AppRunner | None = None
        self.invocation_counts: dict[str, int] = {f.name: 0 for f in self.functions}

    @property
    def env(self) -> Mapping[str, str]:
        """The settings bindings resolve against (the process environment unless given)."""
        return os.environ if self._env is None else self._env

    @property
    def url(self) -> str:
        """Base URL of the HTTP server, e.g. ``http://127.0.0.1:7071``."""
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind the HTTP port and start every queue listener and timer."""
        # Resolve every binding first: a missing setting or a bad schedule stops the start, as on Azure,
        # instead of killing one listener quietly later.
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for fn in self.functions:
            if fn.kind == "queueTrigger":
                queue_name = resolve_expression(str(fn.trigger["queueName"]), self.env).lower()
                connection = str(fn.trigger.get("connection") or "AzureWebJobsStorage")
                client = self._queue_client(connection, queue_name)
                poison = self._queue_client(connection, f"{queue_name}-poison")
                q = self.options.queues
                logger.info("  %s: queue %s (batch %d, threshold %d, maxDequeueCount %d)", fn.name, queue_name,
                            q.batch_size, q.new_batch_threshold, q.max_dequeue_count)
                loops.append((f"queue:{fn.name}", partial(self._queue_loop, fn, client, poison)))
            elif fn.kind == "timerTrigger":
                expression = resolve_expression(str(fn.trigger["schedule"]), self.env)
                next_run = schedule_iterator(expression)
                logger.info("  %s: timer %r", fn.name, expression)
                loops.append((f"timer:{fn.name}", partial(self._timer_loop, fn, next_run)))
        web_app = web.Application(client_max_size=MAX_HTTP_BODY_BYTES)
        # [\s\S] rather than ".": a path with an encoded newline must still reach our JSON 404.
        web_app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle_http)
        # Requests in progress at shutdown get 10 s to finish.
        # Bodies are decoded by decode_body, so that a bad Content-Encoding gets the API's error shape.
        self._runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=10.0, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        for name, loop in loops:
            self._loops.append(asyncio.create_task(self._supervised(name, loop()), name=name))
        prefix = f"/{self.options.route_prefix}" if self.options.route_prefix else ""
        for fn in self.http_functions:
            assert fn.route is not None
            methods = ",".join(fn.trigger.get("methods") or ["*"])
            logger.info("  %s: [%s] %s%s/%s (auth %s)", fn.name, methods, self.url, prefix, fn.route.template,
                        str(fn.trigger.get("authLevel", "function")).lower())
        logger.info("local Functions host listening on %s (%d functions)", self.url, len(self.functions))

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop taking work, let running invocations finish (up to the grace period), close everything."""
        self._stopping.set()
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops.clear()
        if self._runner is not None:
            # Stops accepting connections and lets requests in progress finish.
            await self._runner.cleanup()
            self._runner = None
        if self._invocations:
            logger.info("waiting for %d running invocation(s)", len(self._invocations))
            _, pending = await asyncio.wait(set(self._invocations), timeout=grace_seconds)
            for task in pending:
                # Its message stays leased and comes back later: that is the at-least-once contract.
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for hook in self.on_shutdown:
            try:
                await hook()
            except Exception:
                logger.exception("shutdown hook failed")
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        logger.info("local Functions host stopped")

    async def serve_until_signal(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            logger.info("shutting down")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    # ------------------------------------------------------------------ invocations
    async def _invoke(self, fn: HostedFunction, value: Any, reason: str) -> tuple[bool, Any]:
        """Call the user function as the worker does; (succeeded, return value). Never raises for its errors."""
        invocation_id = uuid.uuid4()
        self.invocation_counts[fn.name] += 1
        started = time.perf_counter()
        logger.debug("Executing 'Functions.%s' (Reason='%s', Id=%s)", fn.name, reason, invocation_id)
        try:
            if inspect.iscoroutinefunction(fn.user_function):
                call: Awaitable[Any] = fn.user_function(**{fn.arg_name: value})
            else:
                # The Python worker runs sync functions on a thread pool.
                call = asyncio.to_thread(fn.user_function, **{fn.arg_name: value})
            timeout = self.options.function_timeout
            result = await (asyncio.wait_for(call, timeout) if timeout else call)
        except asyncio.CancelledError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # BaseException too: a function that dies of anything but a shutdown is a failed invocation
            # (on Azure the worker would crash and the message be retried all the same).
            what = f"timed out after {self.options.function_timeout:g}s" if isinstance(exc, TimeoutError) \
                and self.options.function_timeout else f"{type(exc).__name__}: {exc}"
            logger.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s", fn.name, invocation_id,
                         (time.perf_counter() - started) * 1000, what,
                         exc_info=not isinstance(exc, TimeoutError))
            return False, None
        logger.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", fn.name, invocation_id,
                    (time.perf_counter() - started) * 1000)
        return True, result

    def _track(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._invocations.add(task)
        task.add_done_callback(self._invocations.discard)
        return task

    # ------------------------------------------------------------------ HTTP
    async def _handle_http(self, request: web.Request) -> web.StreamResponse:
        parts = [unquote(p) for p in request.rel_url.raw_path.strip("/").split("/") if p != ""]
        prefix = [p for p in self.options.route_prefix.split("/") if p]
        if parts[: len(prefix)] != prefix:
            return _error(404, "not_found",
                          f"no function serves {request.path} (routes live under /{'/'.join(prefix)})")
        parts = parts[len(prefix):]
        allowed: set[str] = set()
        for fn in self.http_functions:
            assert fn.route is not None
            route_values = fn.route.match(parts)
            if route_values is None:
                continue
            methods = {m.upper() for m in fn.trigger.get("methods") or []}
            if methods and request.method.upper() not in methods:
                allowed |= methods
                continue
            if not self._authorized(fn, request):
                return _error(401, "unauthorized", f"this route needs a function key: the {FUNCTION_KEY_HEADER} "
                                                   f"header or the {FUNCTION_KEY_QUERY} query parameter")
            return await self._call_http(fn, request, route_values)
        if allowed:
            # The host has no route for another method either: it answers 404, not 405.
            return _error(404, "not_found",
                          f"{request.method} is not served here; allowed: {', '.join(sorted(allowed))}")
        return _error(404, "not_found", f"no function serves {request.method} {request.path}")

    def _authorized(self, fn: HostedFunction, request: web.Request) -> bool:
        level = str(fn.trigger.get("authLevel") or "function").lower()
        if level == "anonymous" or not self.enforce_keys:
            return True
        key = request.headers.get(FUNCTION_KEY_HEADER) or request.query.get(FUNCTION_KEY_QUERY) or ""
        return hmac.compare_digest(key.encode(), self.function_key.encode())

    async def _call_http(self, fn: HostedFunction, request: web.Request, route_values: dict[str, str]) -> web.Response:
        try:
            body = decode_body(await request.read(), request.headers.get("Content-Encoding"))
        except BodyEncodingError as exc:
            # A body that does not decode as its Content-Encoding declares (gzip that is not gzip) is the
            # client's fault: a 4xx in the API's error shape, never a 500.
            return _error(exc.status, exc.code, str(exc))
        req = func.HttpRequest(request.method, str(request.url), headers=dict(request.headers),
                               params=dict(request.query), route_params=route_values, body=body)
        task = self._track(self._invoke(fn, req, f"This function was programmatically called via HTTP "
                                                 f"({request.method} {request.path})"), f"http:{fn.name}")
        ok, result = await task
        if not ok:
            return web.Response(status=500, text=json.dumps({"error": "internal_error",
                                                             "detail": "the function failed; see the host log"}),
                                content_type="application/json")
        if isinstance(result, func.HttpResponse):
            headers = {k: v for k, v in result.headers.items() if k.lower() != "content-length"}
            return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
        if result is None:
            return web.Response(status=204)
        text = result if isinstance(result, str) else json.dumps(result)
        return web.Response(status=200, text=text)

    # ------------------------------------------------------------------ queues
    def _queue_client(self, connection: str, queue_name: str) -> QueueClient:
        conn = self.env.get(connection) or (self.env.get("AZURE_STORAGE_CONNECTION_STRING")
                                            if connection == "AzureWebJobsStorage" else None)
        if not conn:
            raise DevHostError(f"connection setting {connection!r} is not set")
        # No message policies: the host decodes base64 itself per message, so one bad message cannot
        # break a whole batch.
        client = QueueClient.from_connection_string(conn, queue_name)
        self._clients.append(client)
        return client

    async def _supervised(self, name: str, loop: Awaitable[None]) -> None:
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except Exception:
            # A listener that dies would leave its queue unserved while the host looks healthy: say so loudly.
            logger.exception("listener %s stopped unexpectedly", name)

    async def _queue_loop(self, fn: HostedFunction, client: QueueClient, poison: QueueClient) -> None:
        q = self.options.queues
        queue_name = client.queue_name
        in_flight: set[asyncio.Task[Any]] = set()
        delay = MIN_POLLING_INTERVAL
        while not self._stopping.is_set():
            while len(in_flight) > q.new_batch_threshold:
                await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
            try:
                messages = [m async for m in client.receive_messages(
                    messages_per_page=q.batch_size, max_messages=q.batch_size,
                    visibility_timeout=self.options.lease_seconds)]
            except ResourceNotFoundError:
                messages = []
                if self.create_queues and await self._create_queue(client):
                    continue
            except Exception as exc:  # storage unreachable: back off like an empty queue, keep trying
                logger.warning("receiving from %s failed: %s", queue_name, exc)
                messages = []
            if not messages:
                # Randomized exponential backoff, as the host's listener: quick first retries, then slower.
                await self._sleep(delay)
                delay = min(q.max_polling_interval, delay * 2) * random.uniform(0.8, 1.0)
                delay = max(delay, MIN_POLLING_INTERVAL)
                continue
            delay = MIN_POLLING_INTERVAL
            for msg in messages:
                task = self._track(self._process_message(fn, client, poison, msg), f"queue:{fn.name}:{msg.id}")
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

    async def _create_queue(self, client: QueueClient) -> bool:
        try:
            await client.create_queue()
            logger.info("created queue %s (local host convenience)", client.queue_name)
        except ResourceExistsError:
            pass
        except Exception as exc:
            logger.warning("creating queue %s failed: %s", client.queue_name, exc)
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _process_message(self, fn: HostedFunction, client: QueueClient, poison: QueueClient, msg: Any) -> None:
        q = self.options.queues
        if msg.dequeue_count > q.max_dequeue_count:
            # Delivered more often than allowed without ever completing (e.g. the host died mid-function).
            await self._to_poison(client, poison, msg)
            return
        raw = msg.content or ""
        if q.message_encoding == "base64":
            try:
                body = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                logger.error("message %s on %s is not base64 (messageEncoding is base64)", msg.id, client.queue_name)
                await self._to_poison(client, poison, msg)
                return
        else:
            body = raw.encode() if isinstance(raw, str) else bytes(raw)
        value = HostQueueMessage(id=msg.id, body=body, dequeue_count=msg.dequeue_count,
                                 expiration_time=msg.expires_on, insertion_time=msg.inserted_on,
                                 time_next_visible=msg.next_visible_on,
                                 pop_receipt=msg.pop_receipt)  # type: ignore[no-untyped-call]
        renewer = asyncio.create_task(self._renew_lease(client, msg))
        try:
            ok, _ = await self._invoke(fn, value, f"New queue message detected on '{client.queue_name}'.")
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        try:
            if ok:
                await client.delete_message(msg.id, msg.pop_receipt)
            elif msg.dequeue_count >= q.max_dequeue_count:
                await self._to_poison(client, poison, msg)
            else:
                # Visible again after visibilityTimeout: the next delivery is the retry.
                await client.update_message(msg.id, msg.pop_receipt,
                                            visibility_timeout=round(q.visibility_timeout))
        except ResourceNotFoundError:
            logger.debug("message %s was already gone", msg.id)
        except Exception as exc:
            logger.warning("completing message %s failed: %s (it will be redelivered)", msg.id, exc)

    async def _renew_lease(self, client: QueueClient, msg: Any) -> None:
        lease = self.options.lease_seconds
        while True:
            await asyncio.sleep(max(1.0, lease / 2))
            try:
                receipt = await client.update_message(msg.id, msg.pop_receipt, visibility_timeout=lease)
                msg.pop_receipt = receipt.pop_receipt
            except Exception as exc:
                logger.warning("renewing the lease of message %s failed: %s", msg.id, exc)

    async def _to_poison(self, client: QueueClient, poison: QueueClient, msg: Any) -> None:
        logger.warning("Message has reached MaxDequeueCount of %d. Moving message %s to queue '%s'.",
                       self.options.queues.max_dequeue_count, msg.id, poison.queue_name)
        try:
            with contextlib.suppress(ResourceExistsError):
                await poison.create_queue()
            # The raw text, still base64: the poison queue's trigger decodes it like any other.
            await poison.send_message(msg.content)
            await client.delete_message(msg.id, msg.pop_receipt)
        except Exception as exc:
            logger.error("moving message %s to %s failed: %s", msg.id, poison.queue_name, exc)

    # ------------------------------------------------------------------ timers
    async def _timer_loop(self, fn: HostedFunction, next_run: Callable[[datetime], datetime]) -> None:
        running: asyncio.Task[Any] | None = None
        last: datetime | None = None
        if fn.trigger.get("runOnStartup"):
            running = self._track(self._invoke(fn, TimerRequest(past_due=False), "Timer fired at startup"),
                                  f"timer:{fn.name}")
        while not self._stopping.is_set():
            due = next_run(datetime.now(UTC))
            await self._sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
            if self._stopping.is_set():
                return
            if running is not None and not running.done():
                # Timer functions never overlap: a tick during a long run is skipped, as the host does.
                logger.warning("timer %s still running; skipping the occurrence due %s", fn.name, due.isoformat())
                continue
            now = datetime.now(UTC)
            status = {"Last": (last or due).isoformat(), "Next": next_run(now).isoformat(),
                      "LastUpdated": now.isoformat()}
            timer = TimerRequest(past_due=(now - due) > timedelta(seconds=5), schedule_status=status,
                                 schedule={"AdjustForDST": True})
            running = self._track(self._invoke(fn, timer, f"Timer fired at {now.isoformat()}"), f"timer:{fn.name}")
            last = due


def schedule_iterator(expression: str) -> Callable[[datetime], datetime]:
    """next-occurrence function of an NCRONTAB expression (six fields, seconds first) or a TimeSpan interval."""
    fields = expression.split()
    if len(fields) == 1 and ":" in expression:
        interval = parse_timespan(expression)
        if not interval:
            raise DevHostError(f"timer interval must be positive: {expression!r}")
        step = timedelta(seconds=interval)
        epoch = datetime(2000, 1, 1, tzinfo=UTC)
        return lambda now: epoch + step * ((now - epoch) // step + 1)
    if len(fields) not in (5, 6):
        raise DevHostError(f"NCRONTAB schedule needs six fields (second minute hour day month weekday): {expression!r}")
    from croniter import croniter

    # NCRONTAB puts seconds first; croniter reads them there with second_at_beginning.
    six = len(fields) == 6
    if not croniter.is_valid(expression, second_at_beginning=six):
        raise DevHostError(f"invalid NCRONTAB schedule {expression!r}")

    def following(now: datetime) -> datetime:
        nxt: datetime = croniter(expression, now, second_at_beginning=six).get_next(datetime)
        return nxt

    return following


# ------------------------------------------------------------------------------------------------ command line
def load_settings(env_files: Sequence[str | Path] = (), settings_file: str | Path | None = None) -> dict[str, str]:
    """Apply env files (override the environment) and local.settings.json (fills gaps) to os.environ."""
    applied: dict[str, str] = {}
    for path in env_files:
        values = parse_env_file(path)
        os.environ.update(values)
        applied.update(values)
    if settings_file is not None and Path(settings_file).is_file():
        for key, value in load_local_settings(settings_file).items():
            if key not in os.environ:
                os.environ[key] = value
                applied[key] = value
    return applied


def load_app(spec: str) -> tuple[Any, func.FunctionApp]:
    """Import ``module:attribute`` (default ``function_app:app``); returns the module and the app."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attr or "app")
    if not isinstance(app, func.FunctionApp):
        raise DevHostError(f"{spec} is not an azure.functions.FunctionApp")
    return module, app


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m scripts.devhost``."""
    parser = argparse.ArgumentParser(prog="python -m scripts.devhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=7071, help="HTTP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--env-file", action="append", default=[],
                        help="KEY=VALUE settings (repeatable; override the environment)")
    parser.add_argument("--settings-file", default="local.settings.json",
                        help="local.settings.json whose Values fill missing settings")
    parser.add_argument("--host-json", help="host.json to follow (default: next to the app module)")
    parser.add_argument("--visibility-timeout", type=float, help="override queues.visibilityTimeout (seconds)")
    parser.add_argument("--max-polling-interval", type=float, help="override queues.maxPollingInterval (seconds)")
    parser.add_argument("--max-dequeue-count", type=int, help="override queues.maxDequeueCount")
    parser.add_argument("--batch-size", type=int, help="override queues.batchSize")
    parser.add_argument("--function-timeout", type=float, help="override functionTimeout (seconds)")
    parser.add_argument("--lease-seconds", type=int,
                        help=f"queue message lease while running (default {DEFAULT_LEASE_SECONDS})")
    parser.add_argument("--no-create-queues", dest="create_queues", action="store_false",
                        help="do not create missing trigger queues (as the real host)")
    parser.add_argument("--log-level", help="DEBUG, INFO... (default: host.json logging.logLevel.default)")
    parser.add_argument("--no-auth", dest="enforce_keys", action="store_false",
                        help="do not require function keys (as `func start` does locally)")
    return parser


def options_from_args(args: argparse.Namespace, host_json: str | Path | None) -> HostOptions:
    """host.json with the command line's overrides."""
    options = HostOptions.from_host_json(host_json)
    q = options.queues
    queues = replace(
        q,
        visibility_timeout=q.visibility_timeout if args.visibility_timeout is None else args.visibility_timeout,
        max_polling_interval=q.max_polling_interval if args.max_polling_interval is None else args.max_polling_interval,
        max_dequeue_count=args.max_dequeue_count or q.max_dequeue_count,
        batch_size=args.batch_size or q.batch_size,
        new_batch_threshold=q.new_batch_threshold if not args.batch_size else args.batch_size // 2,
    )
    timeout = options.function_timeout if args.function_timeout is None else args.function_timeout
    return replace(options, queues=queues, function_timeout=timeout,
                   lease_seconds=args.lease_seconds or options.lease_seconds,
                   log_level=(args.log_level or options.log_level).upper())


async def _serve(args: argparse.Namespace, module: Any, app: func.FunctionApp, options: HostOptions) -> int:
    # function_app exposes its lazily built services; closing them on shutdown avoids unclosed sessions.
    close = getattr(getattr(module, "services", None), "close", None)
    host = DevHost(app, options=options, host=args.host, port=args.port, create_queues=args.create_queues,
                   on_shutdown=[close] if close is not None else [], enforce_keys=args.enforce_keys)
    if not args.enforce_keys:
        logger.warning("function keys are not enforced (--no-auth), as with `func start`; never expose this port")
    await host.serve_until_signal()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: load settings, import the app, serve until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Azure SDK request logs would drown the host's own lines.
    logging.getLogger("azure").setLevel(logging.WARNING)
    sys.path.insert(0, os.getcwd())
    try:
        applied = load_settings(args.env_file, args.settings_file)
        if applied:
            logger.info("settings from files: %s", ", ".join(sorted(applied)))
        module, app = load_app(args.app)
        host_json = args.host_json or Path(getattr(module, "__file__", "") or ".").resolve().parent / "host.json"
        options = options_from_args(args, host_json)
        logging.getLogger().setLevel(options.log_level)
        logger.info("host.json %s: routePrefix=%r, %s, functionTimeout=%s", host_json, options.route_prefix,
                    options.queues, options.function_timeout)
        return asyncio.run(_serve(args, module, app, options))
    except (DevHostError, ValidationError) as exc:
        logger.error("cannot host the app: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
