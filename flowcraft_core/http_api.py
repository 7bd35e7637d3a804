"""The HTTP API of the Functions app, free of azure.functions: parse, validate, call the adapter, answer JSON.

``function_app.py`` turns a ``func.HttpRequest`` into an :class:`ApiRequest`, calls :func:`handle` with the
operation's id, and turns the ``(status, body)`` it gets back into a ``func.HttpResponse`` with
:func:`render`. Everything that decides a status code lives here, so it is tested without the Functions
host, and :mod:`flowcraft_core.openapi` documents the same :data:`OPERATIONS` table.

Errors are always ``{"error": code, "detail": text}``: 400 malformed JSON or JSON that breaks the JSON
policy (:mod:`flowcraft_core.json_policy`: non-finite numbers, lone surrogates, nesting past 64 levels),
invalid fields or a bad run id; 404 unknown run, blueprint or node; 409 a run in the wrong state; 413 a body over
``FLOWCRAFT_MAX_REQUEST_BYTES``; 415 a body that is not JSON; 503 a store that cannot be reached. Bad
input never produces a 500, and :func:`render` always produces strict UTF-8 JSON, whatever a run holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, get_args
from urllib.parse import parse_qs, quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import json_policy
from .builtins.names import SUBFLOW, WEBHOOK
from .engine import RUN_ID_PATTERN, validate_run_id
from .errors import BlueprintError, FlowcraftError, RunStateError, UnknownRunError
from .openapi import build_document
from .protocols import FINAL_STATUSES, RunQuery
from .runs import DEFAULT_TOP, MAX_TOP, InvalidContinuationError, PurgeStores, history, list_runs, purge_run
from .settings import Settings

if TYPE_CHECKING:
    from .azure.services import AzureServices

logger = logging.getLogger("flowcraft.http")

JSON_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_ID_LENGTH = 256
MAX_ACTION_LENGTH = 256
MAX_REASON_LENGTH = 2000
# What a 202 for a run not yet ended tells a poller to wait before asking again (Retry-After, seconds).
RETRY_AFTER_SECONDS = 2
# Each health probe gets this long; a store slower than that is as good as down for a load balancer.
HEALTH_TIMEOUT_SECONDS = 3.0

ApiResult = tuple[int, dict[str, Any]]
ModelT = TypeVar("ModelT", bound=BaseModel)


# ---------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class ApiRequest:
    """An HTTP request as the API sees it (header names lower-cased)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    route_params: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def build(cls, method: str, url: str, *, headers: Mapping[str, str] | None = None,
              params: Mapping[str, str] | None = None, route_params: Mapping[str, str] | None = None,
              body: bytes | None = None) -> ApiRequest:
        """Normalise header names so lookups do not depend on how the host spelled them."""
        return cls(method.upper(), url, {k.lower(): v for k, v in (headers or {}).items()},
                   dict(params or {}), dict(route_params or {}), body or b"")

    def header(self, name: str) -> str | None:
        """A header's value, by case-insensitive name."""
        return self.headers.get(name.lower())


class ApiContext(Protocol):
    """What the handlers need from the process: settings now, and the Azure services when it comes to it."""

    @property
    def settings(self) -> Settings:
        """The app settings (cheap; read once)."""
        ...

    async def services(self) -> AzureServices:
        """The clients and adapter, built on first use."""
        ...


class ApiError(Exception):
    """An error answer: status code, machine-readable code and a sentence for humans."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra

    def result(self) -> ApiResult:
        """The error as ``(status, {"error", "detail", ...})``."""
        return self.status, {"error": self.code, "detail": self.detail, **self.extra}


# ------------------------------------------------------------------------------------- request models
class _RequestModel(BaseModel):
    # Unknown fields are a 400: a misspelt "runid" must not silently start a run under a random id.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartRunRequest(_RequestModel):
    """Body of ``POST /api/runs``."""

    blueprint_id: str = Field(alias="blueprintId", min_length=1, max_length=MAX_ID_LENGTH,
                              description="Id of a deployed blueprint (see GET /api/blueprints).")
    context: dict[str, Any] | None = Field(default=None, description="Initial context of the run (a JSON object).")
    run_id: str | None = Field(
        default=None, alias="runId",
        description="Run id to use (idempotency key); generated when omitted. 1-128 characters of letters, "
                    "digits and . _ : @ = + -, starting with a letter or digit.",
        json_schema_extra={"pattern": RUN_ID_PATTERN.pattern, "maxLength": 128})

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_run_id(value)


class ResumeRequest(_RequestModel):
    """Body of ``POST /api/runs/{runId}/resume``."""

    action: str = Field(min_length=1, max_length=MAX_ACTION_LENGTH,
                        description="Action the waiting node returns; it picks the outgoing edges (e.g. approve).")
    output: Any = Field(default=None, description="Output of the waiting node (any JSON).")
    node_id: str | None = Field(default=None, alias="nodeId", min_length=1, max_length=MAX_ID_LENGTH,
                                description="Node to resume; needed only when several nodes are awaiting.")


class CancelRequest(_RequestModel):
    """Optional body of ``POST /api/runs/{runId}/cancel``."""

    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON_LENGTH,
                               description="Why the run is cancelled (kept in the run's status).")


# ------------------------------------------------------------------------------------ response models
class _ResponseModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    def dump(self) -> dict[str, Any]:
        """camelCase JSON without absent optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


RunStatusValue = Literal["running", "awaiting", "completed", "failed", "cancelled", "stalled"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatusValue)


class ErrorResponse(_ResponseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="Machine-readable code, e.g. invalid_json, run_not_found, run_state_conflict.")
    detail: str = Field(description="What went wrong, in a sentence.")


class RunAccepted(_ResponseModel):
    """Answer of ``POST /api/runs``."""

    run_id: str = Field(alias="runId")
    status: Literal["running"] = "running"
    status_url: str = Field(alias="statusUrl", description="Where to GET the run's status (also the Location header).")
    cancel_url: str | None = Field(default=None, alias="cancelUrl", description="POST here to cancel the run.")
    resume_url: str | None = Field(default=None, alias="resumeUrl", description="POST {action, output?} here "
                                                                               "to resume an awaiting run.")
    purge_url: str | None = Field(default=None, alias="purgeUrl", description="DELETE here to purge the run "
                                                                             "once it ended.")
    history_url: str | None = Field(default=None, alias="historyUrl", description="GET the run's node executions.")


class RunView(_ResponseModel):
    """A run's status, as ``GET /api/runs/{runId}`` shows it."""

    run_id: str = Field(alias="runId")
    blueprint_id: str | None = Field(default=None, alias="blueprintId")
    status: RunStatusValue
    created_at: str | None = Field(default=None, alias="createdAt", description="ISO-8601 UTC.")
    last_updated: str | None = Field(default=None, alias="lastUpdated", description="ISO-8601 UTC.")
    result: dict[str, Any] | None = Field(
        default=None, description="Completed: {context, errors}, context being the final context. "
                                  "Failed: {errors} with the failing node, message and attempt.")
    reason: str | None = Field(default=None, description="Why the run failed or was cancelled.")
    awaiting: list[str] | None = Field(default=None, description="Nodes waiting for resume or a webhook call.")
    awaiting_children: list[dict[str, Any]] | None = Field(
        default=None, alias="awaitingChildren",
        description="Child runs (subflows) that await input: {runId, nodeId (the subflow node), awaiting}.")
    parent_run_id: str | None = Field(default=None, alias="parentRunId",
                                      description="A child run's parent run (a subflow node of it).")
    parent_node_id: str | None = Field(default=None, alias="parentNodeId",
                                       description="A child run's subflow node in its parent.")
    children: list[dict[str, Any]] | None = Field(
        default=None, description="A parent's child runs: {runId, nodeId, iteration, attempt, status}.")


class RunSummary(_ResponseModel):
    """One entry of ``GET /api/runs``."""

    run_id: str = Field(alias="runId")
    blueprint_id: str | None = Field(default=None, alias="blueprintId")
    status: RunStatusValue
    created_at: str | None = Field(default=None, alias="createdAt", description="ISO-8601 UTC.")
    last_updated: str | None = Field(default=None, alias="lastUpdated", description="ISO-8601 UTC.")


class RunList(_ResponseModel):
    """Answer of ``GET /api/runs``: newest first."""

    runs: list[RunSummary]
    continuation_token: str | None = Field(
        alias="continuationToken", description="Pass back as continuationToken (with the same filters) for "
                                               "the next page; null on the last page.")

    def dump(self) -> dict[str, Any]:
        """continuationToken stays present when null (clients test for null to stop paging)."""
        return {"runs": [run.dump() for run in self.runs], "continuationToken": self.continuation_token}


class RunPurged(_ResponseModel):
    """Answer of ``DELETE /api/runs/{runId}``."""

    run_id: str = Field(alias="runId")
    purged: Literal[True] = True
    items: int = Field(description="Cosmos DB items deleted (run header, node records, markers, status).")


class NodeExecution(_ResponseModel):
    """One execution of a node, as ``GET /api/runs/{runId}/history`` lists it."""

    node_id: str = Field(alias="nodeId")
    iteration: int = Field(description="Loop iteration (0 outside loops).")
    status: Literal["completed", "failed", "awaiting"]
    attempts: int = Field(description="Attempts the node's retry policy made.")
    started_at: int | None = Field(alias="startedAt", description="Epoch milliseconds; null for records "
                                                                  "written before timings were kept.")
    finished_at: int | None = Field(alias="finishedAt", description="Epoch milliseconds.")
    duration_ms: int | None = Field(alias="durationMs")
    error: dict[str, Any] | None = Field(default=None, description="The failure, for a failed node.")

    def dump(self) -> dict[str, Any]:
        """Timings stay present when null; error only when there is one."""
        data = self.model_dump(by_alias=True, mode="json")
        if data.get("error") is None:
            data.pop("error", None)
        return data


class RunHistory(_ResponseModel):
    """Answer of ``GET /api/runs/{runId}/history``: node executions in commit order."""

    run_id: str = Field(alias="runId")
    nodes: list[NodeExecution]

    def dump(self) -> dict[str, Any]:
        """Nodes keep their null timings."""
        return {"runId": self.run_id, "nodes": [node.dump() for node in self.nodes]}


class ResumeAccepted(_ResponseModel):
    """Answer of the resume and webhook routes."""

    run_id: str = Field(alias="runId")
    resumed_node_id: str = Field(alias="resumedNodeId")
    status: RunStatusValue
    status_url: str = Field(alias="statusUrl")


class BlueprintSummary(_ResponseModel):
    """One entry of ``GET /api/blueprints``."""

    id: str
    version: str
    node_count: int = Field(alias="nodeCount")
    edge_count: int = Field(alias="edgeCount")


class BlueprintList(_ResponseModel):
    """Answer of ``GET /api/blueprints``."""

    blueprints: list[BlueprintSummary]


class HealthCheck(_ResponseModel):
    """One dependency's probe."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    ok: bool
    latency_ms: float | None = Field(default=None, alias="latencyMs")
    detail: str | None = None


class HealthReport(_ResponseModel):
    """Answer of ``GET /api/health`` (200 healthy, 503 unhealthy)."""

    status: Literal["healthy", "unhealthy"]
    checks: dict[str, HealthCheck]
    error: str | None = Field(default=None, description="unhealthy, when status is unhealthy.")
    detail: str | None = None
    broken_blueprints: dict[str, list[str]] = Field(
        default_factory=dict, alias="brokenBlueprints",
        description="Blueprints refused at start-up, with every lint problem (runs of them answer 400).")


# ------------------------------------------------------------------------------------------ body parsing
def is_json_media_type(content_type: str) -> bool:
    """application/json, or any application/*+json, with or without parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_MEDIA_TYPE or (media.startswith("application/") and media.endswith("+json"))


_MISSING: Any = object()


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), and Cosmos DB would refuse them later, far from here.
    raise ValueError(f"{name} is not valid JSON")


def read_json(request: ApiRequest, *, max_bytes: int, required: bool) -> Any:
    """The request body as JSON; ``_MISSING`` when it is empty and optional; ApiError otherwise."""
    body = request.body
    if len(body) > max_bytes:
        raise ApiError(413, "payload_too_large",
                       f"request body of {len(body)} bytes exceeds the limit of {max_bytes} bytes "
                       "(FLOWCRAFT_MAX_REQUEST_BYTES)")
    if not body.strip():
        if required:
            raise ApiError(400, "missing_body", "this route needs a JSON request body")
        return _MISSING
    content_type = request.header("content-type")
    # Lenient where clients are careless but the body is JSON: no content type (scripts often send none),
    # or form encoding (what `curl -d` declares by default); the body then has to parse as JSON. Any
    # other declared type (text/plain, multipart...) is refused.
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and media != FORM_MEDIA_TYPE and not is_json_media_type(media):
        raise ApiError(415, "unsupported_media_type", f"content type {media!r} is not JSON; send application/json")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                                            f"column {exc.colno}") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", f"request body is nested deeper than {json_policy.MAX_DEPTH} "
                                            "levels") from None
    # Checked here, before anything is stored: 1e999 (infinity), lone surrogates, nesting too deep.
    problem = json_policy.violation(data)
    if problem is not None:
        raise ApiError(400, "invalid_json", f"request body is not acceptable JSON: {problem}")
    return data


def parse_model(model: type[ModelT], data: Any) -> ModelT:
    """Validate JSON into a request model; every problem is listed in one 400."""
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", f"request body must be a JSON object, not {_json_type(data)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err["loc"]) or "(body)"
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(f"{where}: {message}")
        raise ApiError(400, "invalid_request", "; ".join(problems)) from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), type(value).__name__)


def route_run_id(request: ApiRequest) -> str:
    """The ``{runId}`` route parameter, validated (Cosmos DB ids may not hold / \\ ? #)."""
    value = request.route_params.get("runId", "")
    try:
        return validate_run_id(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_run_id", str(exc)) from None


def route_id(request: ApiRequest, name: str) -> str:
    """A non-run id from the route (blueprint or node id), checked for length only."""
    value = request.route_params.get(name, "")
    if not value or len(value) > MAX_ID_LENGTH:
        raise ApiError(400, f"invalid_{_snake(name)}", f"{name} must be 1-{MAX_ID_LENGTH} characters")
    return value


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# ---------------------------------------------------------------------------------------- presentation
def iso_utc(value: Any) -> str | None:
    """Epoch seconds as ISO-8601 UTC with milliseconds (``2024-05-01T12:00:00.123Z``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if isinstance(value, str) else None
    try:
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):  # not a time at all (NaN, out of range)
        return None


def run_view(item: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The public shape of a status item: documented fields only, timestamps as ISO strings.

    Never raises on odd stored data (nested too deep to serialize, a value of the wrong type): the view
    is then built from a sanitized copy (json_policy.sanitize), so a run stays readable whatever it holds.
    """
    try:
        return _run_view(item, children)
    except Exception as exc:
        logger.warning("run %s: its status item needed sanitizing to be shown: %s",
                       json_policy.sanitize(item.get("runId") or item.get("id")), _describe(exc))
        return _run_view(json_policy.sanitize(dict(item)), json_policy.sanitize(list(children)))


def _run_view(item: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    status, result, awaiting = item.get("status"), item.get("result"), item.get("awaiting")
    awaiting_children = item.get("awaitingChildren")
    view = RunView(
        run_id=str(item.get("runId") or item.get("id")),
        blueprint_id=_text_or_none(item.get("blueprintId")),
        # A status this version does not know (written by a newer worker) still shows, as running.
        status=status if status in RUN_STATUSES else "running",
        created_at=iso_utc(item.get("createdAt")),
        last_updated=iso_utc(item.get("lastUpdated")),
        result=result if isinstance(result, dict) and result else None,
        reason=_text_or_none(item.get("reason")),
        awaiting=([str(n) for n in awaiting] or None) if status == "awaiting" and isinstance(awaiting, list) else None,
        awaiting_children=((list(awaiting_children) or None)
                           if status == "awaiting" and isinstance(awaiting_children, list) else None),
        parent_run_id=_text_or_none(item.get("parentRunId")),
        parent_node_id=_text_or_none(item.get("parentNodeId")),
        children=list(children) if children else None,
    )
    return view.dump()


def _text_or_none(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)


def api_base_url(request: ApiRequest, route: str) -> str:
    """Scheme, host and route prefix of the API, from a request that matched ``route`` (a template)."""
    parts = urlsplit(request.url)
    # Drop as many path segments as the route template has: what is left is the route prefix ("/api"),
    # whatever the host was configured with, and route values never confuse it.
    segments = parts.path.rstrip("/").split("/")
    depth = len(route.strip("/").split("/"))
    base_path = "/".join(segments[:-depth]) if len(segments) > depth else ""
    return f"{parts.scheme}://{parts.netloc}{base_path}"


def status_url(base: str, run_id: str) -> str:
    """The GET URL of a run."""
    return f"{base}/runs/{quote(run_id, safe='')}"


class Answer(dict[str, Any]):
    """A response body that also carries response headers (render adds them), or a non-JSON body (raw)."""

    def __init__(self, body: Mapping[str, Any], headers: Mapping[str, str], raw: bytes | None = None) -> None:
        super().__init__(body)
        self.headers = dict(headers)
        self.raw = raw


def query_values(request: ApiRequest, name: str) -> list[str]:
    """Every value of a query parameter, repeated or comma-separated (the host's params keep only one)."""
    values = parse_qs(urlsplit(request.url).query, keep_blank_values=True).get(name)
    if values is None:
        values = [request.params[name]] if name in request.params else []
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _query_value(request: ApiRequest, name: str) -> str | None:
    values = query_values(request, name)
    if len(values) > 1:
        raise ApiError(400, "invalid_query", f"{name} may be given once")
    return values[0] if values else None


def _query_time(request: ApiRequest, name: str) -> float | None:
    value = _query_value(request, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid_query", f"{name} must be an ISO-8601 date-time, e.g. "
                                             "2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_run_query(request: ApiRequest) -> tuple[RunQuery, int, str | None]:
    """The filters, page size and continuation token of ``GET /api/runs``."""
    statuses = tuple(dict.fromkeys(query_values(request, "status")))
    unknown = [s for s in statuses if s not in RUN_STATUSES]
    if unknown:
        raise ApiError(400, "invalid_query", f"unknown status {', '.join(map(repr, unknown))}; one of "
                                             f"{', '.join(RUN_STATUSES)}")
    blueprint_id = _query_value(request, "blueprintId")
    if blueprint_id is not None and len(blueprint_id) > MAX_ID_LENGTH:
        raise ApiError(400, "invalid_query", f"blueprintId must be 1-{MAX_ID_LENGTH} characters")
    created_from, created_to = _query_time(request, "createdFrom"), _query_time(request, "createdTo")
    raw_top = _query_value(request, "top")
    top = DEFAULT_TOP
    if raw_top is not None:
        if not raw_top.isdigit() or not 1 <= int(raw_top) <= MAX_TOP:
            raise ApiError(400, "invalid_query", f"top must be a whole number from 1 to {MAX_TOP}")
        top = int(raw_top)
    token = _query_value(request, "continuationToken")
    if token is not None and len(token) > 16_384:
        raise ApiError(400, "invalid_continuation_token", "continuationToken is malformed")
    return RunQuery(statuses=statuses, blueprint_id=blueprint_id, created_from=created_from,
                    created_to=created_to), top, token


def run_summary(item: Mapping[str, Any]) -> RunSummary:
    """A status item as a run list entry."""
    status = item.get("status")
    return RunSummary(run_id=str(item.get("runId") or item.get("id")), blueprint_id=item.get("blueprintId"),
                      status=status if status in RUN_STATUSES else "running",
                      created_at=iso_utc(item.get("createdAt")), last_updated=iso_utc(item.get("lastUpdated")))


def _stores(services: AzureServices) -> PurgeStores:
    adapter = services.adapter
    return PurgeStores(adapter.run_store, adapter.status_store, adapter.coordination)


# -------------------------------------------------------------------------------------------- handlers
# One function per route, taking parsed inputs and the services, returning (status, body). Domain errors
# (UnknownRunError, RunStateError...) are left to handle(), which maps them to status codes in one place.
async def start_run(services: AzureServices, body: StartRunRequest, *, base_url: str) -> ApiResult:
    """Create a run and enqueue its start nodes: 202 with where to poll."""
    adapter = services.adapter
    problems = adapter.engine.broken.get(body.blueprint_id)
    if problems:
        raise ApiError(400, "invalid_blueprint", f"blueprint {body.blueprint_id!r} was refused at start-up: "
                       + "; ".join(problems), problems=problems)
    if body.blueprint_id not in adapter.engine.blueprints:
        raise ApiError(404, "blueprint_not_found", f"no blueprint {body.blueprint_id!r} is deployed; known: "
                                                   f"{', '.join(sorted(adapter.engine.blueprints)) or 'none'}")
    run_id = await adapter.start_run(body.blueprint_id, body.context or {}, body.run_id)
    url = status_url(base_url, run_id)
    return 202, RunAccepted(run_id=run_id, status_url=url, cancel_url=f"{url}/cancel", resume_url=f"{url}/resume",
                            purge_url=url, history_url=f"{url}/history").dump()


async def get_run(services: AzureServices, run_id: str, *, url: str | None = None) -> ApiResult:
    """The run's status: 202 with Retry-After while it has not ended (the async polling convention), 200 after."""
    item = await services.adapter.run_result(run_id)
    if item is None:
        raise UnknownRunError(f"run {run_id!r} does not exist")
    view = run_view(item, await _children(services, item))
    if item.get("status") in FINAL_STATUSES:
        return 200, view
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if url is not None:
        headers["Location"] = url
    return 202, Answer(view, headers)


async def _children(services: AzureServices, item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A parent's child runs; only runs of a blueprint with a subflow node pay for the read."""
    engine = services.adapter.engine
    blueprint = engine.blueprints.get(str(item.get("blueprintId")))
    if blueprint is None or not any(node.uses == SUBFLOW for node in blueprint.nodes):
        return []
    return await engine.children.children_of(str(item.get("runId") or item.get("id")))


async def list_runs_page(services: AzureServices, query: RunQuery, top: int, token: str | None) -> ApiResult:
    """One page of runs, newest first, with the token of the next page."""
    try:
        items, next_token = await list_runs(services.adapter.status_store, query, top=top,
                                            continuation_token=token)
    except InvalidContinuationError as exc:
        raise ApiError(400, "invalid_continuation_token", str(exc)) from None
    return 200, RunList(runs=[run_summary(item) for item in items], continuation_token=next_token).dump()


async def purge(services: AzureServices, run_id: str) -> ApiResult:
    """Delete an ended run from Cosmos DB and Redis: 409 while it has not ended."""
    count = await purge_run(_stores(services), run_id)
    return 200, RunPurged(run_id=run_id, items=count).dump()


async def run_history(services: AzureServices, run_id: str) -> ApiResult:
    """Every node execution of a run, in commit order, with timings and attempts."""
    state = await services.adapter.run_store.load(run_id)
    if state is None:
        raise UnknownRunError(f"run {run_id!r} does not exist")
    nodes = [NodeExecution.model_validate(entry) for entry in history(state)]
    return 200, RunHistory(run_id=run_id, nodes=nodes).dump()


async def cancel_run(services: AzureServices, run_id: str, body: CancelRequest) -> ApiResult:
    """Cancel a run that has not ended: 200 with its status afterwards."""
    await services.adapter.cancel(run_id, body.reason or "cancelled by request")
    item = await services.adapter.get_status(run_id)
    if item is None:
        raise UnknownRunError(f"run {run_id!r} does not exist")
    return 200, run_view(item)


async def resume_run(services: AzureServices, run_id: str, body: ResumeRequest, *, base_url: str) -> ApiResult:
    """Complete an awaiting node with an action and output: 202, the run continues on the queue."""
    node_id = await services.adapter.resume_with_action(run_id, body.action, body.output, body.node_id)
    return 202, await _resumed(services, run_id, node_id, base_url)


async def webhook(services: AzureServices, run_id: str, node_id: str, output: Any, *, action: str | None,
                  base_url: str) -> ApiResult:
    """Resume a run's webhook node with the request body as its output."""
    adapter = services.adapter
    item = await adapter.get_status(run_id)
    if item is None:
        raise UnknownRunError(f"run {run_id!r} does not exist")
    blueprint = adapter.engine.blueprints.get(str(item.get("blueprintId")))
    node = blueprint.node(node_id) if blueprint is not None else None
    if node is None:
        raise ApiError(404, "node_not_found", f"run {run_id!r} has no node {node_id!r}")
    # Only webhook nodes take webhook calls: a wait node (a human approval) must not be completable by
    # whoever learns the webhook URL pattern.
    if node.uses != WEBHOOK:
        raise ApiError(409, "not_a_webhook", f"node {node_id!r} is a {node.uses!r} node, not a webhook; "
                                             "resume it with POST /api/runs/{runId}/resume")
    resumed = await adapter.resume_with_action(run_id, action, output, node_id)
    return 202, await _resumed(services, run_id, resumed, base_url)


async def _resumed(services: AzureServices, run_id: str, node_id: str, base_url: str) -> dict[str, Any]:
    item = await services.adapter.get_status(run_id) or {}
    status = item.get("status", "running")
    return ResumeAccepted(run_id=run_id, resumed_node_id=node_id, status=status,
                          status_url=status_url(base_url, run_id)).dump()


def list_blueprints(blueprints: Mapping[str, Any]) -> ApiResult:
    """Every deployed blueprint with its version and size."""
    items = [BlueprintSummary(id=bp_id, version=bp.version, node_count=len(bp.nodes), edge_count=len(bp.edges))
             for bp_id, bp in sorted(blueprints.items())]
    return 200, BlueprintList(blueprints=items).dump()


def get_blueprint(blueprints: Mapping[str, Any], blueprint_id: str) -> ApiResult:
    """A blueprint's JSON with its analysis and a Mermaid diagram."""
    from .analysis import analyze_blueprint, generate_mermaid

    bp = blueprints.get(blueprint_id)
    if bp is None:
        raise ApiError(404, "blueprint_not_found", f"no blueprint {blueprint_id!r} is deployed")
    return 200, {**bp.to_wire(), "analysis": analyze_blueprint(bp).to_dict(), "mermaid": generate_mermaid(bp)}


async def health(context: ApiContext) -> ApiResult:
    """Probe the job queue, Cosmos DB and Redis at once: 200 when all answer, 503 with details otherwise."""
    try:
        services = await context.services()
    except Exception as exc:  # settings missing or a client that cannot even be built: say which
        check = HealthCheck(ok=False, detail=_describe(exc))
        return 503, HealthReport(status="unhealthy", checks={"configuration": check}, error="unhealthy",
                                 detail=f"configuration: {check.detail}").dump()
    settings = services.settings

    async def queue() -> dict[str, Any]:
        props = await services.queue_client.get_queue_properties()
        return {"queue": settings.queue_name, "approximateMessageCount": props.approximate_message_count}

    async def cosmos() -> dict[str, Any]:
        database = services.cosmos_client.get_database_client(settings.cosmos_database)
        for name in (settings.cosmos_context_container, settings.cosmos_status_container):
            await database.get_container_client(name).read()
        return {"database": settings.cosmos_database}

    async def redis() -> dict[str, Any]:
        await services.redis.ping()
        return {}

    names = ("queue", "cosmos", "redis")
    results = await asyncio.gather(*(_probe(p) for p in (queue(), cosmos(), redis())))
    checks = dict(zip(names, results, strict=True))
    failed = [f"{name}: {check.detail}" for name, check in checks.items() if not check.ok]
    broken = dict(services.adapter.engine.broken)
    if failed:
        return 503, HealthReport(status="unhealthy", checks=checks, error="unhealthy",
                                 detail="; ".join(failed), broken_blueprints=broken).dump()
    return 200, HealthReport(status="healthy", checks=checks, broken_blueprints=broken).dump()


async def _probe(probe: Awaitable[dict[str, Any]]) -> HealthCheck:
    started = time.perf_counter()
    try:
        extra = await asyncio.wait_for(probe, HEALTH_TIMEOUT_SECONDS)
    except TimeoutError:
        return HealthCheck(ok=False, latency_ms=_ms(started), detail=f"no answer within {HEALTH_TIMEOUT_SECONDS:g}s")
    except Exception as exc:
        return HealthCheck(ok=False, latency_ms=_ms(started), detail=_describe(exc))
    return HealthCheck.model_validate({"ok": True, "latencyMs": _ms(started), **extra})


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------- endpoints (raw requests)
async def _ep_start_run(request: ApiRequest, context: ApiContext) -> ApiResult:
    body = parse_model(StartRunRequest, read_json(request, max_bytes=context.settings.max_request_bytes,
                                                  required=True))
    return await start_run(await context.services(), body, base_url=api_base_url(request, OPERATIONS["startRun"].route))


async def _ep_get_run(request: ApiRequest, context: ApiContext) -> ApiResult:
    run_id = route_run_id(request)
    url = status_url(api_base_url(request, OPERATIONS["getRun"].route), run_id)
    return await get_run(await context.services(), run_id, url=url)


async def _ep_list_runs(request: ApiRequest, context: ApiContext) -> ApiResult:
    query, top, token = parse_run_query(request)
    return await list_runs_page(await context.services(), query, top, token)


async def _ep_purge_run(request: ApiRequest, context: ApiContext) -> ApiResult:
    run_id = route_run_id(request)
    return await purge(await context.services(), run_id)


async def _ep_run_history(request: ApiRequest, context: ApiContext) -> ApiResult:
    run_id = route_run_id(request)
    return await run_history(await context.services(), run_id)


async def _ep_cancel_run(request: ApiRequest, context: ApiContext) -> ApiResult:
    run_id = route_run_id(request)
    data = read_json(request, max_bytes=context.settings.max_request_bytes, required=False)
    body = CancelRequest() if data is _MISSING else parse_model(CancelRequest, data)
    return await cancel_run(await context.services(), run_id, body)


async def _ep_resume_run(request: ApiRequest, context: ApiContext) -> ApiResult:
    run_id = route_run_id(request)
    body = parse_model(ResumeRequest, read_json(request, max_bytes=context.settings.max_request_bytes,
                                                required=True))
    return await resume_run(await context.services(), run_id, body,
                            base_url=api_base_url(request, OPERATIONS["resumeRun"].route))


async def _ep_webhook(request: ApiRequest, context: ApiContext) -> ApiResult:
    run_id = route_run_id(request)
    node_id = route_id(request, "nodeId")
    action = request.params.get("action") or None
    if action is not None and len(action) > MAX_ACTION_LENGTH:
        raise ApiError(400, "invalid_request", f"action must be at most {MAX_ACTION_LENGTH} characters")
    if action is not None and json_policy.violation(action) is not None:
        raise ApiError(400, "invalid_request", "action is not valid Unicode")
    data = read_json(request, max_bytes=context.settings.max_request_bytes, required=False)
    output = None if data is _MISSING else data
    return await webhook(await context.services(), run_id, node_id, output, action=action,
                         base_url=api_base_url(request, OPERATIONS["callWebhook"].route))


async def _ep_list_blueprints(request: ApiRequest, context: ApiContext) -> ApiResult:
    return list_blueprints((await context.services()).adapter.engine.blueprints)


async def _ep_get_blueprint(request: ApiRequest, context: ApiContext) -> ApiResult:
    blueprint_id = route_id(request, "id")
    return get_blueprint((await context.services()).adapter.engine.blueprints, blueprint_id)


async def _ep_health(request: ApiRequest, context: ApiContext) -> ApiResult:
    return await health(context)


async def _ep_run_view(request: ApiRequest, context: ApiContext) -> ApiResult:
    from .view import page

    html, headers = page()
    return 200, Answer({}, {**headers, "Content-Type": "text/html; charset=utf-8"}, raw=html)


async def _ep_openapi(request: ApiRequest, context: ApiContext) -> ApiResult:
    return 200, openapi_document(server_url=api_base_url(request, OPERATIONS["openapi"].route))


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in :data:`OPERATIONS`."""
    return build_document(OPERATIONS.values(), error_model=ErrorResponse, server_url=server_url)


Handler = Callable[[ApiRequest, ApiContext], Awaitable[ApiResult]]


@dataclass(frozen=True)
class Operation:
    """One route of the API: what function_app registers and what the OpenAPI document describes."""

    operation_id: str
    method: str
    route: str
    auth: Literal["function", "anonymous"]
    summary: str
    handler: Handler
    success: int
    request_model: type[BaseModel] | None = None
    body: Literal["none", "required", "optional", "any"] = "none"
    response_model: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    description: str = ""
    query: tuple[tuple[str, str], ...] = ()
    # Other success codes answered with the same body (getRun: 202 while the run has not ended).
    also: tuple[int, ...] = ()


_RUN_ERRORS = (400, 404, 503)
_BODY_ERRORS = (400, 413, 415)

OPERATIONS: dict[str, Operation] = {op.operation_id: op for op in (
    Operation("startRun", "POST", "runs", "function", "Start a run of a blueprint", _ep_start_run, 202,
              StartRunRequest, "required", RunAccepted, (*_BODY_ERRORS, 404, 409, 503),
              "Creates the run and enqueues its start nodes; poll statusUrl. A runId that is already taken is a "
              "409, so a client may use its own id as an idempotency key."),
    Operation("getRun", "GET", "runs/{runId}", "function", "Get a run's status and result", _ep_get_run, 200,
              None, "none", RunView, _RUN_ERRORS,
              "200 once the run ended (result.context holds the final context of a completed run); 202 with "
              "Retry-After and Location while it is running or awaiting, with the same body.", also=(202,)),
    Operation("listRuns", "GET", "runs", "function", "List runs, newest first", _ep_list_runs, 200,
              None, "none", RunList, (400, 503),
              "Filters combine; status may repeat or be comma-separated. createdFrom is inclusive, createdTo "
              "exclusive. Pages stay consistent while runs start: pass continuationToken back with the same "
              "filters until it is null.",
              (("status", "Run status (repeatable, or comma-separated)."),
               ("blueprintId", "Only runs of this blueprint."),
               ("createdFrom", "ISO-8601 date-time: runs created at or after it."),
               ("createdTo", "ISO-8601 date-time: runs created before it."),
               ("top", f"Page size, 1-{MAX_TOP} (default {DEFAULT_TOP})."),
               ("continuationToken", "Token of the next page, from the previous answer."))),
    Operation("purgeRun", "DELETE", "runs/{runId}", "function", "Purge an ended run", _ep_purge_run, 200,
              None, "none", RunPurged, (400, 404, 409, 503),
              "Deletes every Cosmos DB item of the run (both containers) and its Redis keys. A run that has "
              "not ended is a 409: cancel it first."),
    Operation("getRunHistory", "GET", "runs/{runId}/history", "function", "List a run's node executions",
              _ep_run_history, 200, None, "none", RunHistory, _RUN_ERRORS,
              "One entry per node execution in commit order, with startedAt/finishedAt (epoch ms), durationMs "
              "and attempts."),
    Operation("cancelRun", "POST", "runs/{runId}/cancel", "function", "Cancel a run", _ep_cancel_run, 200,
              CancelRequest, "optional", RunView, (*_BODY_ERRORS, 404, 409, 503),
              "Stops scheduling its nodes and signals running ones. A run that already ended is a 409."),
    Operation("resumeRun", "POST", "runs/{runId}/resume", "function", "Resume an awaiting run", _ep_resume_run, 202,
              ResumeRequest, "required", ResumeAccepted, (*_BODY_ERRORS, 404, 409, 503),
              "Completes the waiting node with action and output; the action picks the outgoing edges. A run "
              "that is not awaiting is a 409."),
    Operation("callWebhook", "POST", "webhooks/{runId}/{nodeId}", "function", "Call a webhook node", _ep_webhook,
              202, None, "any", ResumeAccepted, (*_BODY_ERRORS, 404, 409, 503),
              "The JSON body (optional) becomes the webhook node's output; the optional action query parameter "
              "routes like a node's action. Only webhook nodes accept it.",
              (("action", "Action to route by (optional)."),)),
    Operation("listBlueprints", "GET", "blueprints", "function", "List deployed blueprints", _ep_list_blueprints,
              200, None, "none", BlueprintList, (503,)),
    Operation("getBlueprint", "GET", "blueprints/{id}", "function", "Get a blueprint with analysis and diagram",
              _ep_get_blueprint, 200, None, "none", None, (400, 404, 503),
              "The blueprint JSON plus analysis (start and terminal nodes, cycles) and a Mermaid diagram."),
    Operation("runView", "GET", "view", "function", "The run view (an HTML page)", _ep_run_view, 200,
              description="Lists runs and shows one as a graph colored by node state, a timeline of its node "
                          "executions, its final context and errors, with cancel and resume buttons. Open it "
                          "with ?code=<function key>; the page sends the key with its API calls."),
    Operation("health", "GET", "health", "anonymous", "Check the queue, Cosmos DB and Redis", _ep_health, 200,
              None, "none", HealthReport, (503,), "503 with the failing checks when any dependency is down."),
    Operation("openapi", "GET", "openapi.json", "anonymous", "This OpenAPI document", _ep_openapi, 200),
)}


# ---------------------------------------------------------------------------------------- dispatching
async def handle(operation_id: str, request: ApiRequest, context: ApiContext) -> ApiResult:
    """Run an operation and turn every outcome, including errors, into ``(status, body)``."""
    operation = OPERATIONS[operation_id]
    try:
        return await operation.handler(request, context)
    except ApiError as exc:
        return exc.result()
    except Exception as exc:
        return error_result(exc, operation_id)


def error_result(exc: Exception, operation_id: str = "") -> ApiResult:
    """Map a domain or infrastructure exception to its status code and error body."""
    if isinstance(exc, UnknownRunError):
        return ApiError(404, "run_not_found", str(exc)).result()
    if isinstance(exc, json_policy.JsonPolicyError):
        # Request bodies are checked while parsing; this catches a value the API built from one.
        return ApiError(400, "invalid_json", str(exc)).result()
    if isinstance(exc, RunStateError):
        return ApiError(409, "run_state_conflict", str(exc)).result()
    if isinstance(exc, BlueprintError):
        # An unknown id is caught before this; what is left is a deployed blueprint that does not compile.
        return ApiError(422, "invalid_blueprint", str(exc)).result()
    if _is_unavailable(exc):
        logger.warning("%s: a store is unavailable: %s", operation_id, _describe(exc))
        return ApiError(503, "service_unavailable", f"a backing service did not answer: {_describe(exc)}").result()
    if isinstance(exc, FlowcraftError):
        # Missing settings and the like: the request was fine, the app is not ready for it.
        logger.error("%s: %s", operation_id, exc)
        return ApiError(503, "not_configured", str(exc)).result()
    incident = uuid.uuid4().hex[:12]
    logger.exception("%s failed unexpectedly (incident %s)", operation_id, incident)
    return ApiError(500, "internal_error", f"unexpected error; see the app's logs for incident {incident}").result()


def _is_unavailable(exc: Exception) -> bool:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(exc, ServiceRequestError | ServiceResponseError | RedisConnectionError | RedisTimeoutError
                  | TimeoutError | ConnectionError):
        return True
    # Throttling (429) that outlived the SDK's retries, or the service saying it is unavailable.
    return isinstance(exc, HttpResponseError) and exc.status_code in (429, 502, 503, 504)


def render(result: ApiResult) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of an answer (Location for accepted runs, an Answer's own); never raises.

    A JSON body that is not strict JSON (a lone surrogate, a non-finite number, nesting too deep: data
    stored before the JSON policy, or by a node that bypassed it) is rendered from a sanitized copy.
    """
    status, body = result
    headers = {"Content-Type": f"{JSON_MEDIA_TYPE}; charset=utf-8", "Cache-Control": "no-store"}
    location = body.get("statusUrl")
    if status == 202 and isinstance(location, str):
        headers["Location"] = location
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    headers.update(getattr(body, "headers", {}))
    raw = getattr(body, "raw", None)
    if isinstance(raw, bytes):
        return status, raw, headers
    try:
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except Exception as exc:
        logger.warning("an answer needed sanitizing to be rendered as JSON: %s", _describe(exc))
        payload = json.dumps(json_policy.sanitize(body), separators=(",", ":"), ensure_ascii=False,
                             allow_nan=False).encode()
    return status, payload, headers
