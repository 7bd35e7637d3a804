"""Jobs on an Azure Storage Queue: base64 JSON with ids only, as the Functions host expects."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from typing import Any, Protocol

from azure.storage.queue.aio import QueueClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import json_policy
from ..engine import RUN_ID_PATTERN
from ..errors import NotAJobError
from ..protocols import Job
from ..telemetry import TRACEPARENT_MAX_LENGTH, current_traceparent
from .retry import RetryPolicy, retry_transient

# Storage Queues accept visibility timeouts up to 7 days; a longer sleep is re-enqueued on wake-up.
MAX_DELAY_SECONDS = 7 * 24 * 3600 - 60
MAX_MESSAGE_BYTES = 64 * 1024


class JobMessage(BaseModel):
    """The queue message body of a job; anything else on the queue is not ours."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    run_id: str = Field(alias="runId", min_length=1, max_length=1024)
    blueprint_id: str = Field(alias="blueprintId", min_length=1, max_length=256)
    node_id: str = Field(alias="nodeId", min_length=1, max_length=512)
    iteration: int = Field(default=0, ge=0, le=10_000_000)
    attempt: int = Field(default=1, ge=1, le=1000)
    via: str | None = Field(default=None, max_length=512)
    # Optional W3C trace context (telemetry); a malformed one only starts a new trace.
    traceparent: str | None = Field(default=None, max_length=TRACEPARENT_MAX_LENGTH)
    # Deliveries the message had before it carried this job: a polling worker hands a finished job's
    # message on to a successor (AzureQueueAdapter), and the queue's dequeue count runs on with it.
    dequeue_base: int = Field(default=0, alias="dequeueBase", ge=0, le=1_000_000)

    @field_validator("run_id")
    @classmethod
    def _run_id_safe(cls, value: str) -> str:
        # Child runs of subflows get ids of the same alphabet (flowcraft_core.children.child_run_id).
        if not RUN_ID_PATTERN.match(value):
            raise ValueError("not a valid run id")
        return value

    def to_job(self) -> Job:
        """The engine's job."""
        return Job(self.run_id, self.blueprint_id, self.node_id, self.iteration, self.attempt, self.via,
                   self.traceparent)


def encode_job(job: Job, *, dequeue_base: int = 0) -> str:
    """The message text: base64 of compact JSON (the Functions host's default messageEncoding)."""
    data = job.to_dict()
    if dequeue_base:
        data["dequeueBase"] = dequeue_base
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.b64encode(raw).decode()


def parse_job(body: bytes | str, *, base64_encoded: bool = False) -> Job:
    """Turn a message body into a Job, or raise NotAJobError saying exactly what is wrong.

    Whatever the body holds, the only exception this raises is NotAJobError: a message that makes the
    decoder itself fail (nested thousands deep, a number of 5000 digits...) is just as much not a job,
    and a worker must be able to poison it like any other.
    """
    return parse_message(body, base64_encoded=base64_encoded).to_job()


def parse_message(body: bytes | str, *, base64_encoded: bool = False) -> JobMessage:
    """Like parse_job, but the whole message: the job and its dequeue base."""
    try:
        return _parse_message(body, base64_encoded=base64_encoded)
    except NotAJobError:
        raise
    except Exception as exc:
        raise NotAJobError(f"message could not be decoded: {type(exc).__name__}: {str(exc)[:200]}") from None


def _parse_message(body: bytes | str, *, base64_encoded: bool) -> JobMessage:
    if isinstance(body, str):
        body = body.encode("utf-8", errors="replace")
    if len(body) > MAX_MESSAGE_BYTES:
        raise NotAJobError(f"message of {len(body)} bytes is larger than any job ({MAX_MESSAGE_BYTES})")
    if base64_encoded:
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise NotAJobError("message is not base64 (the queue's messageEncoding is base64)") from None
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAJobError(f"message is not JSON: {exc}") from None
    except RecursionError:
        raise NotAJobError("message is not JSON this worker accepts: nested too deeply") from None
    problem = json_policy.violation(data)
    if problem is not None:
        raise NotAJobError(f"message is not JSON this worker accepts: {problem}")
    if not isinstance(data, dict):
        raise NotAJobError(f"message is JSON {type(data).__name__}, not a job object")
    try:
        return JobMessage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise NotAJobError(f"message is not a Flowcraft job: {problems}") from None


class LocalDispatch(Protocol):
    """A polling worker's own slots, for jobs it sends itself (see AzureJobQueue.enqueue)."""

    def hand_on(self, job: Job) -> bool:
        """Take a job due now to run next in the current job's slot and message; False if it cannot."""

    def reserve(self) -> int | None:
        """Reserve a slot; returns the visibility timeout to send the job with, or None when none is free."""

    def dispatch(self, message: Any) -> None:
        """Execute the sent message (invisible, with its pop receipt) in the reserved slot."""

    def release(self) -> None:
        """Give the reserved slot back (the send failed)."""

    def wake(self) -> None:
        """A job due now went onto the queue: end an idle pause between polls."""


class AzureJobQueue:
    """JobQueue over a QueueClient created WITHOUT message encode policies (we encode ourselves).

    Encoding here rather than in the client lets the worker receive raw text and report a message
    that is not base64 as a bad message, instead of failing the whole receive call.
    """

    # Transient send failures are retried (a retried send may duplicate a job: delivery is at least once).
    retry_policy: RetryPolicy | None = None

    def __init__(self, queue_client: QueueClient) -> None:
        self.client = queue_client
        self.sent = 0
        # Set by a running polling worker (AzureQueueAdapter.start); never on the Functions host.
        self.local: LocalDispatch | None = None

    @retry_transient("queue.enqueue")
    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        """Send the job, visible after delay_seconds (rounded up to whole seconds)."""
        delay = min(MAX_DELAY_SECONDS, max(0, math.ceil(delay_seconds)))
        # The sender's span becomes the parent of the job's span: one run, one trace.
        traceparent = current_traceparent()
        if traceparent and traceparent != job.traceparent:
            job = dataclasses.replace(job, traceparent=traceparent)
        # On a polling worker a job due now runs on that worker when it can, with no receive and no
        # poll wait; its message is durable all the same (see AzureQueueAdapter): first the job that
        # enqueues it hands its own message on to it (one update instead of a send and a delete),
        # else it is sent invisible to run in a free slot with the pop receipt the send returns.
        local = self.local if delay == 0 else None
        if local is not None and local.hand_on(job):
            return
        self.sent += 1
        text = encode_job(job)
        timeout = local.reserve() if local is not None else None
        if local is None or timeout is None:
            await self.client.send_message(text, visibility_timeout=delay or None)
            if local is not None:
                local.wake()
            return
        try:
            message = await self.client.send_message(text, visibility_timeout=timeout)
        except BaseException:
            local.release()
            raise
        local.dispatch(message)

    @retry_transient("queue.enqueue")
    async def send(self, job: Job) -> None:
        """Send a job due now for any worker to receive (never run locally)."""
        self.sent += 1
        await self.client.send_message(encode_job(job))

    @retry_transient("queue.pass_on")
    async def pass_on(self, message: Any, job: Job, *, dequeue_base: int, visibility_timeout: int) -> Any:
        """Give a message this worker holds the job of a successor; returns it with its new pop receipt.

        If a lost reply is retried, the retry's pop receipt is stale and it fails at once (not transient):
        the caller then sends the job instead, so it may exist twice (delivery is at least once).
        """
        return await self.client.update_message(message, pop_receipt=message.pop_receipt,
                                                content=encode_job(job, dequeue_base=dequeue_base),
                                                visibility_timeout=visibility_timeout)
