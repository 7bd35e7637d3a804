"""Jobs on an Azure Storage Queue: base64 JSON with ids only, as the Functions host expects."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from typing import Any

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


def encode_job(job: Job) -> str:
    """The message text: base64 of compact JSON (the Functions host's default messageEncoding)."""
    raw = json.dumps(job.to_dict(), separators=(",", ":")).encode()
    return base64.b64encode(raw).decode()


def parse_job(body: bytes | str, *, base64_encoded: bool = False) -> Job:
    """Turn a message body into a Job, or raise NotAJobError saying exactly what is wrong.

    Whatever the body holds, the only exception this raises is NotAJobError: a message that makes the
    decoder itself fail (nested thousands deep, a number of 5000 digits...) is just as much not a job,
    and a worker must be able to poison it like any other.
    """
    try:
        return _parse_job(body, base64_encoded=base64_encoded)
    except NotAJobError:
        raise
    except Exception as exc:
        raise NotAJobError(f"message could not be decoded: {type(exc).__name__}: {str(exc)[:200]}") from None


def _parse_job(body: bytes | str, *, base64_encoded: bool) -> Job:
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
        return JobMessage.model_validate(data).to_job()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise NotAJobError(f"message is not a Flowcraft job: {problems}") from None


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

    @retry_transient("queue.enqueue")
    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        """Send the job, visible after delay_seconds (rounded up to whole seconds)."""
        delay = min(MAX_DELAY_SECONDS, max(0, math.ceil(delay_seconds)))
        # The sender's span becomes the parent of the job's span: one run, one trace.
        traceparent = current_traceparent()
        if traceparent and traceparent != job.traceparent:
            job = dataclasses.replace(job, traceparent=traceparent)
        self.sent += 1
        await self.client.send_message(encode_job(job), visibility_timeout=delay or None)
