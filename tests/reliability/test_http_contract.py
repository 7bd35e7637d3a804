"""The HTTP API against its own OpenAPI document, and function keys on every route that needs one.

Schemathesis generates requests from ``flowcraft_core.http_api.openapi_document()`` — valid ones and
deliberately invalid ones — and each is handed to the app's function for that route exactly as the
Functions host would (a ``func.HttpRequest`` with the route values), on the emulators. No answer may be a
5xx, and every answer must be a status, content type, headers and body that the document declares for
the operation. (Function keys are the host's job, so that check is left to the second part.)

The same requests are sent again with hostile JSON spliced into their bodies (tests/hostile_json.py:
nesting far too deep, non-finite numbers, lone surrogates, huge strings and numbers, odd types, bytes
that are not UTF-8): still never a 5xx, and every answer strict JSON as documented.

Then, through a local Functions host (``scripts.devhost``, in a subprocess): for every HTTP binding of the
app, a request without a key, or with a wrong one, is refused with 401 when the binding's auth level is
``function``/``admin``; every mutating route has such a level; only read-only probes are anonymous, and
the document says so too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import schemathesis
from azure.core.exceptions import ResourceNotFoundError
from hostile_json import HOSTILE_FRAGMENTS, hostile_documents, splice
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import DataGenerationMethod
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection

from flowcraft_core.azure.clients import make_cosmos_client, make_queue_client
from flowcraft_core.http_api import openapi_document
from flowcraft_dev.emulators import Emulators, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FLOWCRAFT_SCHEMATHESIS_EXAMPLES", "40"))
HOSTILE_EXAMPLES = int(os.environ.get("FLOWCRAFT_SCHEMATHESIS_HOSTILE_EXAMPLES", "25"))

# The document is OpenAPI 3.1 (JSON Schema 2020-12): schemathesis 3.x supports it behind this switch.
schemathesis.experimental.OPEN_API_3_1.enable()
schema = schemathesis.from_dict(openapi_document(), data_generation_methods=[DataGenerationMethod.positive,
                                                                              DataGenerationMethod.negative])


@dataclass(frozen=True)
class Host:
    url: str
    key: str
    log: Path


@pytest.fixture(scope="module")
def devhost(emulators: Emulators, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The app on a local Functions host (subprocess) over this module's own queue and database."""
    token = uuid.uuid4().hex[:12]
    port = free_port()
    key = secrets.token_urlsafe(24)
    queue, database = f"http-{token}", f"http-{token}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_")}
    env.update(emulators.env())
    env.update({"FLOWCRAFT_QUEUE_NAME": queue, "COSMOS_DB_DATABASE": database, "FLOWCRAFT_CREATE_RESOURCES": "true",
                "FLOWCRAFT_FUNCTION_KEY": key, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"})
    log_path = tmp_path_factory.mktemp("devhost") / "devhost.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "scripts.devhost", "--port", str(port),
                                 "--settings-file", str(log_path.parent / "none.json"),
                                 "--max-polling-interval", "1"],
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    host = Host(f"http://127.0.0.1:{port}", key, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{host.url}/api/health", timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the local host did not become healthy"
            time.sleep(0.2)
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        asyncio.run(_cleanup(emulators, queue, database))


async def _cleanup(emulators: Emulators, queue: str, database: str) -> None:
    for name in (queue, f"{queue}-poison"):
        async with make_queue_client(emulators.queue_connection_string, name) as qc:
            with contextlib.suppress(ResourceNotFoundError):
                await qc.delete_queue()
    async with make_cosmos_client(emulators.cosmos_connection_string, verify_tls=False) as cc:
        with contextlib.suppress(ResourceNotFoundError):
            await cc.delete_database(database)


class AppDriver:
    """Calls function_app's HTTP functions as the host does, on one event loop in a background thread."""

    def __init__(self) -> None:
        import function_app
        from scripts.devhost import hosted_functions

        self.module = function_app
        self.functions: dict[tuple[str, str], Any] = {}
        for fn in hosted_functions(function_app.app):
            if fn.kind == "httpTrigger":
                for method in fn.trigger.get("methods") or ["GET"]:
                    self.functions[("/" + str(fn.trigger["route"]), str(method).upper())] = fn.user_function
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="app-driver", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, case: schemathesis.Case, *, body: bytes | None = None) -> requests.Response:
        """Send the case as the host would; ``body`` replaces the case's body with raw bytes (JSON)."""
        import azure.functions as func

        prepared = requests.Request(**case.as_transport_kwargs(base_url="http://localhost/api")).prepare()
        headers = dict(prepared.headers)
        if body is not None:
            headers = {**{k: v for k, v in headers.items() if k.lower() not in ("content-type", "content-length")},
                       "Content-Type": "application/json", "Content-Length": str(len(body))}
        else:
            body = prepared.body.encode() if isinstance(prepared.body, str) else (prepared.body or b"")
        request = func.HttpRequest(
            method=str(prepared.method), url=str(prepared.url), headers=headers,
            params=dict(parse_qsl(urlsplit(str(prepared.url)).query, keep_blank_values=True)),
            route_params={k: str(v) for k, v in (case.path_parameters or {}).items()}, body=body)
        function = self.functions[(case.operation.path, case.method.upper())]
        started = time.monotonic()
        answer = self.run(function(request))
        response = requests.Response()
        response.status_code = answer.status_code
        response._content = answer.get_body()
        headers = requests.structures.CaseInsensitiveDict(dict(answer.headers))
        if "content-type" not in headers and answer.mimetype:
            headers["Content-Type"] = f"{answer.mimetype}; charset={answer.charset or 'utf-8'}"
        response.headers = headers
        response.encoding = answer.charset or "utf-8"
        response.request = prepared
        response.url = str(prepared.url)
        response.elapsed = timedelta(seconds=time.monotonic() - started)
        return response

    def close(self) -> None:
        self.run(self.module.services.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def app_driver(emulators: Emulators) -> Iterator[AppDriver]:
    """function_app on this module's own queue and database (its lazily built services read these settings)."""
    token = uuid.uuid4().hex[:12]
    queue, database = f"api-{token}", f"api-{token}"
    settings = {**emulators.env(), "FLOWCRAFT_QUEUE_NAME": queue, "COSMOS_DB_DATABASE": database,
                "FLOWCRAFT_CREATE_RESOURCES": "true", "FLOWCRAFT_WORKFLOWS": "workflows"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        driver = AppDriver()
        driver.run(driver.module.services.close())  # forget settings another test may have cached
        try:
            yield driver
        finally:
            driver.close()
            asyncio.run(_cleanup(emulators, queue, database))


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_every_answer_matches_the_openapi_document(case: schemathesis.Case, app_driver: AppDriver) -> None:
    response = app_driver.call(case)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
    # Excluded: keys are checked by the host, not the function (see the tests below); and a request that
    # only adds an unknown or empty query parameter is not "negative" for an API that ignores them.
    case.validate_response(response, excluded_checks=(ignored_auth, negative_data_rejection))


@st.composite
def hostile_body(draw: st.DrawFn, case: schemathesis.Case) -> bytes | None:
    """The case's body with a hostile fragment spliced in at one of its fields, or a whole hostile document."""
    if case.operation.method.upper() == "GET":
        return None
    if isinstance(case.body, dict) and case.body and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(case.body)))
        return splice(case.body, [key], draw(st.sampled_from(HOSTILE_FRAGMENTS)))
    return draw(hostile_documents())


@pytest.mark.slow
@schema.parametrize()
@schema.given(data=st.data())
@settings(max_examples=HOSTILE_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_hostile_json_in_any_request_is_answered_as_documented(case: schemathesis.Case, data: st.DataObject,
                                                               app_driver: AppDriver) -> None:
    # The generated requests again, with what issue 14's attack used spliced into their bodies: nesting
    # far too deep, 1e999, NaN, lone surrogates, 5000-digit numbers, huge strings, wrong types, bad bytes.
    body = data.draw(hostile_body(case), label="body")
    response = app_driver.call(case, body=body)
    assert response.status_code < 500, (case.method, case.formatted_path, (body or b"")[:300], response.text[:500])
    if response.content and response.headers.get("content-type", "").startswith("application/json"):
        json.loads(response.content.decode("utf-8"), parse_constant=lambda name: pytest.fail(f"{name} in an answer"))
    case.validate_response(response, excluded_checks=(ignored_auth, negative_data_rejection))


def _bindings() -> list[dict[str, str]]:
    import function_app
    from scripts.devhost import hosted_functions

    found = []
    for fn in hosted_functions(function_app.app):
        if fn.kind != "httpTrigger":
            continue
        for method in fn.trigger.get("methods") or ["GET"]:
            found.append({"name": fn.name, "route": str(fn.trigger["route"]), "method": str(method).upper(),
                          "auth": str(fn.trigger.get("authLevel") or "function").lower()})
    return found


def _call(url: str, method: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method != "GET" else None,  # noqa: S310
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_mutating_routes_require_a_function_key_and_the_document_agrees() -> None:
    bindings = _bindings()
    assert bindings
    for b in bindings:
        if b["method"] not in ("GET", "HEAD", "OPTIONS"):
            assert b["auth"] in ("function", "admin"), b
    anonymous = {(b["route"], b["method"]) for b in bindings if b["auth"] == "anonymous"}
    assert anonymous <= {("health", "GET"), ("openapi.json", "GET")}, anonymous
    doc = openapi_document()
    documented_anonymous = {(path.lstrip("/"), method.upper()) for path, ops in doc["paths"].items()
                            for method, op in ops.items() if op.get("security") == []}
    assert documented_anonymous == anonymous


@pytest.mark.slow
def test_routes_refuse_requests_without_the_right_key(devhost: Host) -> None:
    for b in _bindings():
        path = b["route"].replace("{runId}", "some-run").replace("{nodeId}", "some-node").replace("{id}", "some-id")
        url = f"{devhost.url}/api/{path}"
        without = _call(url, b["method"])
        wrong = _call(url, b["method"], {"x-functions-key": "not-" + devhost.key})
        wrong_query = _call(f"{url}?code=nope", b["method"])
        if b["auth"] == "anonymous":
            assert 401 not in (without, wrong, wrong_query), (b, without, wrong)
        else:
            assert (without, wrong, wrong_query) == (401, 401, 401), b
            with_key = _call(url, b["method"], {"x-functions-key": devhost.key})
            assert with_key != 401, b
            assert with_key < 500, (b, with_key, json.dumps(b))
