"""Flowcraft's Azure Functions, as a ``func.Blueprint`` any Function App can register.

```python
import azure.functions as func
from flowcraft_functions import blueprint

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(blueprint)
```

- ``run_job``: one workflow node per message of the job queue (``%FLOWCRAFT_QUEUE_NAME%``).
- ``fail_poisoned_job``: a job the host gave up on (``<queue>-poison``) fails its run with a reason.
- ``reconcile_stalled_runs``: the reconciler, on ``%FLOWCRAFT_RECONCILE_SCHEDULE%``.
- HTTP routes under ``/api`` (host.json ``routePrefix``): runs (start, list, status, history, purge), resume,
  cancel, webhooks, the run view, blueprints,
  health and the OpenAPI document. Request handling lives in ``flowcraft_core.http_api``; each request is
  an OpenTelemetry span (the parent of the run's job spans when it starts a run).

This module lives outside ``flowcraft_core`` so that the engine never imports ``azure.functions``. The Azure
clients are built once per worker process, on first use, from the app settings (``services``).
"""

from __future__ import annotations

import asyncio
import logging

import azure.functions as func
from pydantic import ValidationError

from flowcraft_core import http_api, telemetry
from flowcraft_core.azure.services import AzureServices, build_services, run_retention
from flowcraft_core.errors import FlowcraftError, InvalidJobError, NotAJobError
from flowcraft_core.settings import Settings

__all__ = ["LazyServices", "blueprint", "services"]

logger = logging.getLogger("flowcraft.functions")


class LazyServices:
    """The process's Azure services, built on first use; also the HTTP API's context.

    The Python worker runs async functions on one event loop, so one lock serialises the first build.
    Async clients belong to the loop that created them: if a caller comes from another loop (tests that
    drive the functions from several loops), the services are built again for that loop.
    """

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._services: AzureServices | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def settings(self) -> Settings:
        """App settings, read from the environment once."""
        if self._settings is None:
            try:
                self._settings = Settings.from_env()
            except ValidationError as exc:
                # A bad app setting is the deployment's problem, not the caller's: the API answers 503.
                raise FlowcraftError(f"invalid app settings: {exc}") from None
        return self._settings

    async def services(self) -> AzureServices:
        """The services for the running event loop (built at most once per loop)."""
        loop = asyncio.get_running_loop()
        if self._services is not None and self._loop is loop:
            return self._services
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop, self._services = asyncio.Lock(), loop, None
        async with self._lock:
            if self._services is None:
                # A failed build leaves nothing behind: the next call tries again (e.g. once Cosmos is up).
                self._services = await build_services(self.settings)
                logger.info("services ready: queue %s, database %s, %d blueprint(s)", self.settings.queue_name,
                            self.settings.cosmos_database, len(self._services.adapter.engine.blueprints))
        return self._services

    async def close(self) -> None:
        """Close the clients (the local host calls this on shutdown) and forget the settings."""
        services, self._services, self._settings = self._services, None, None
        if services is not None and self._loop is asyncio.get_running_loop():
            await services.close()


services = LazyServices()
blueprint = func.Blueprint()  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------------------------------ queues
@blueprint.queue_trigger(arg_name="msg", queue_name="%FLOWCRAFT_QUEUE_NAME%", connection="AzureWebJobsStorage")
async def run_job(msg: func.QueueMessage) -> None:
    """Execute one node of a run; raising lets the host retry the message and, in the end, poison it."""
    adapter = (await services.services()).adapter
    try:
        # The host already decoded the base64 message text (host.json messageEncoding).
        outcome = await adapter.handle_message(msg.get_body(), dequeue_count=msg.dequeue_count or 1,
                                               message_id=msg.id)
    except NotAJobError as exc:
        # Not base64/JSON/a job at all (however it broke the decoder): no retry can change that, so it
        # goes to the poison queue at once, logged once here; fail_poisoned_job drops it with its reason.
        logger.error("queue message %s is not a Flowcraft job (%s); moving it to the poison queue", msg.id, exc)
        await adapter.poison(msg.get_body(), reason=str(exc))
        return
    except InvalidJobError as exc:
        # A well-formed job for a run or node that does not exist, or that its run never scheduled: no
        # retry can change that either. Returning deletes the message; the log keeps the evidence. (In
        # the poison queue, fail_poisoned_job would fail the run it names: a forged job must not do that.)
        # A run whose job was dropped here by mistake stalls and is picked up by the reconciler.
        logger.error("dropped queue message %s (delivery %s): %s; body: %.300r", msg.id, msg.dequeue_count,
                     exc, msg.get_body())
        return
    with telemetry.log_fields(**{"flowcraft.run_id": outcome.run_id, "flowcraft.node_id": outcome.node_id}):
        logger.info("job %s/%s: %s%s", outcome.run_id, outcome.node_id, outcome.status,
                    f" ({outcome.detail})" if outcome.detail else "")


@blueprint.queue_trigger(arg_name="msg", queue_name="%FLOWCRAFT_QUEUE_NAME%-poison", connection="AzureWebJobsStorage")
async def fail_poisoned_job(msg: func.QueueMessage) -> None:
    """A job failed maxDequeueCount times: fail its run with a reason so nobody waits for it forever."""
    logger.error("poison message %s: %.500r", msg.id, msg.get_body())
    adapter = (await services.services()).adapter
    # The poison message's own dequeue count restarts at 1, so it says nothing about the original retries.
    run_id = await adapter.fail_poisoned(msg.get_body())
    if run_id is not None:
        logger.error("run %s failed: one of its jobs was moved to the poison queue", run_id)


# ------------------------------------------------------------------------------------------------- timer
@blueprint.timer_trigger(arg_name="timer", schedule="%FLOWCRAFT_RECONCILE_SCHEDULE%")
async def reconcile_stalled_runs(timer: func.TimerRequest) -> None:
    """Re-enqueue what stalled runs should be doing (runs still 'running' but not updated lately)."""
    if timer.past_due:
        logger.warning("reconciler timer is past due")
    built = await services.services()
    stats = await built.reconciler.run()
    logger.info("reconciler: %s", stats.to_dict())
    # Retention rides on the same timer (FLOWCRAFT_RETENTION_DAYS; unset keeps every run).
    purged = await run_retention(built)
    if purged is not None and purged.runs:
        logger.info("retention: %s", purged.to_dict())


# -------------------------------------------------------------------------------------------------- HTTP
async def _serve(operation_id: str, req: func.HttpRequest, route: str) -> func.HttpResponse:
    headers = dict(req.headers)
    with telemetry.http_span(req.method, route, headers) as span:
        request = http_api.ApiRequest.build(req.method, req.url, headers=headers, params=dict(req.params),
                                            route_params=dict(req.route_params), body=req.get_body())
        status, body, response_headers = http_api.render(await http_api.handle(operation_id, request, services))
        telemetry.set_http_status(span, status)
    mimetype = response_headers.get("Content-Type", "application/json").split(";", 1)[0]
    return func.HttpResponse(body, status_code=status, headers=response_headers, mimetype=mimetype)


@blueprint.route(route="runs", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def start_run(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/runs {blueprintId, context?, runId?} -> 202 {runId, status, statusUrl}."""
    return await _serve("startRun", req, "runs")


@blueprint.route(route="runs/{runId}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_run(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/runs/{runId} -> the run's status, with result.context once completed."""
    return await _serve("getRun", req, "runs/{runId}")


@blueprint.route(route="runs", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/runs?status=&blueprintId=&createdFrom=&createdTo=&top=&continuationToken= -> a page of runs."""
    return await _serve("listRuns", req, "runs")


@blueprint.route(route="runs/{runId}", methods=["DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def purge_run(req: func.HttpRequest) -> func.HttpResponse:
    """DELETE /api/runs/{runId} -> 200 {runId, purged, items} for an ended run, 409 otherwise."""
    return await _serve("purgeRun", req, "runs/{runId}")


@blueprint.route(route="runs/{runId}/history", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def run_history(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/runs/{runId}/history -> the run's node executions with timings."""
    return await _serve("getRunHistory", req, "runs/{runId}/history")


@blueprint.route(route="runs/{runId}/cancel", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def cancel_run(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/runs/{runId}/cancel {reason?} -> the cancelled run's status."""
    return await _serve("cancelRun", req, "runs/{runId}/cancel")


@blueprint.route(route="runs/{runId}/resume", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def resume_run(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/runs/{runId}/resume {action, output?, nodeId?} -> 202."""
    return await _serve("resumeRun", req, "runs/{runId}/resume")


@blueprint.route(route="webhooks/{runId}/{nodeId}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def call_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """POST /api/webhooks/{runId}/{nodeId} with the webhook node's output as body -> 202."""
    return await _serve("callWebhook", req, "webhooks/{runId}/{nodeId}")


@blueprint.route(route="view", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def run_view(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/view?code=<key> -> the run view (HTML)."""
    return await _serve("runView", req, "view")


@blueprint.route(route="blueprints", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def list_blueprints(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/blueprints -> the deployed blueprints."""
    return await _serve("listBlueprints", req, "blueprints")


@blueprint.route(route="blueprints/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
async def get_blueprint(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/blueprints/{id} -> the blueprint with its analysis and a Mermaid diagram."""
    return await _serve("getBlueprint", req, "blueprints/{id}")


@blueprint.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/health -> 200, or 503 naming the dependency that is down (anonymous, for probes)."""
    return await _serve("health", req, "health")


@blueprint.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """GET /api/openapi.json -> the OpenAPI 3.1 document of these routes (anonymous)."""
    return await _serve("openapi", req, "openapi.json")
