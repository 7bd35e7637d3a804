"""The distributed runtime on Azure: Storage Queue jobs, Cosmos DB state, Redis coordination."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.cosmos.aio import CosmosClient
from azure.storage.queue.aio import QueueClient

from ..engine import Engine, EngineOptions, JobOutcome
from ..errors import InvalidJobError
from ..protocols import CoordinationStore, Job
from ..telemetry import job_span
from .cosmos import CosmosRunStore, CosmosStatusStore, RequestCounter
from .queue import AzureJobQueue, parse_job, parse_message

logger = logging.getLogger("flowcraft.azure")
# Set only by the reliability tests (see the fault injection module); never in production.
FAULT_CRASH_ENV = "FLOWCRAFT_FAULT_CRASH_AT"
# The longest a busy worker delays a receive to gather free slots into one batch.
GATHER_SECONDS = 0.05
# Received messages wait for a slot (AzureQueueAdapter._ready) only while the worker's jobs take less
# than this on average: a waiting message is held from other workers until one of this worker's jobs
# ends, which must be soon.
READY_JOB_SECONDS = 1.0
# ... and while a slot took a job within that long; a message that waited longer than READY_MAX_WAIT
# (every slot kept busy by handed-on chains, say) is given back to the queue for other workers.
READY_MAX_WAIT = 2.0
# A message is handed on to a successor job only while it has this long to live: an update does
# not extend a message's time to live (7 days from its send by default).
HAND_ON_MIN_TTL = timedelta(days=1)


@dataclass
class _Delivery:
    """One delivery of a queue message to this worker."""

    message: Any  # the SDK's QueueMessage: id, pop receipt, content, expiry
    dequeues: int  # the queue's dequeue count of the message (0: sent by this worker, never received)
    job: Job | None = None
    # A job due now that this delivery's job enqueued: it runs next here, carried by this message.
    successor: Job | None = None


# The delivery whose job this task is executing (hand_on looks it up from inside the engine).
_CURRENT_DELIVERY: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar(
    "flowcraft_delivery", default=None)


def _lives_long(message: Any) -> bool:
    expires = getattr(message, "expires_on", None)
    if not isinstance(expires, datetime):
        return False
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires - datetime.now(UTC) > HAND_ON_MIN_TTL


@dataclass
class RuntimeOptions:
    """What the engine runs: the node registry and blueprints, and its pluggable parts."""

    registry: Mapping[str, Any] = field(default_factory=dict)
    blueprints: Mapping[str, Any] = field(default_factory=dict)
    dependencies: Mapping[str, Any] = field(default_factory=dict)
    evaluator: Any = None
    event_bus: Any = None
    middleware: list[Any] = field(default_factory=list)
    engine: EngineOptions | None = None


@dataclass
class WorkerOptions:
    """How the standalone polling worker behaves."""

    # Jobs handled at once by one worker process; nodes mostly wait on I/O, so this can exceed cores.
    concurrency: int = 16
    # Seconds a received message stays invisible; extended while its node is still running.
    visibility_timeout: int = 60
    # Longest pause between polls of an empty queue (the first retries come sooner).
    max_poll_interval: float = 2.0
    # Deliveries of one message before it goes to the poison queue (the Functions host default is 5).
    max_dequeue_count: int = 5
    # While a job runs, its run's lastUpdated is refreshed this often (keep it well below the reconciler's
    # stalled threshold) and cancellation is checked.
    heartbeat_seconds: float = 30.0
    # A job this worker sends that is due now runs here at once when a slot is free (sent invisible,
    # deleted with the send's pop receipt) instead of waiting for a receive; see AzureJobQueue.enqueue.
    eager_dispatch: bool = True


class AzureQueueAdapter:
    """Runs workflow jobs from an Azure Storage Queue, keeping state in Cosmos DB and joins in Redis."""

    def __init__(
        self,
        *,
        queue_client: QueueClient,
        cosmos_client: CosmosClient,
        coordination_store: CoordinationStore,
        cosmos_database_name: str = "flowcraftDb",
        context_container_name: str = "contexts",
        status_container_name: str = "statuses",
        runtime_options: RuntimeOptions | Mapping[str, Any] | None = None,
        worker_options: WorkerOptions | None = None,
        poison_queue_client: QueueClient | None = None,
    ) -> None:
        opts = runtime_options if isinstance(runtime_options, RuntimeOptions) else RuntimeOptions(
            **dict(runtime_options or {}))
        self.queue_client = queue_client
        self.poison_queue_client = poison_queue_client
        self.cosmos_client = cosmos_client
        self.cosmos_requests = RequestCounter()
        self.run_store = CosmosRunStore.from_client(cosmos_client, cosmos_database_name, context_container_name,
                                                    self.cosmos_requests)
        self.status_store = CosmosStatusStore.from_client(cosmos_client, cosmos_database_name,
                                                          status_container_name, self.cosmos_requests)
        self.job_queue = AzureJobQueue(queue_client)
        self.coordination = coordination_store
        self.engine = Engine(
            registry=opts.registry, blueprints=opts.blueprints, run_store=self.run_store,
            status_store=self.status_store, coordination=coordination_store, queue=self.job_queue,
            evaluator=opts.evaluator, event_bus=opts.event_bus, middleware=opts.middleware,
            dependencies=opts.dependencies, options=opts.engine,
        )
        if self.engine.fault_hook is None and os.environ.get(FAULT_CRASH_ENV, "").strip():
            # Reliability tests crash workers on purpose. Fault injection is dev-only code that is not
            # deployed, so it is imported only when asked for (and fails loudly where it is missing).
            from flowcraft_dev.faults import fault_hook_from_env

            self.engine.fault_hook = fault_hook_from_env()
        self.worker_options = worker_options or WorkerOptions()
        self._stopping = asyncio.Event()
        # Set when this process enqueued jobs (a finished job's successors, a started run): the poller
        # then ends its idle pause at once instead of sleeping up to max_poll_interval.
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        # Deletes of finished jobs' messages, sent after their slot was freed (see _retire).
        self._retiring: set[asyncio.Task[None]] = set()
        # Messages received while every slot was busy, with when they were received: the next slot to
        # finish takes one at once instead of waiting for a receive (see _poll_loop).
        self._ready: collections.deque[tuple[Any, float]] = collections.deque()
        # Set whenever a slot or a place in _ready frees up: the poller waits on it for room to receive.
        self._room_changed = asyncio.Event()
        # Moving average of how long this worker's jobs take (starts as "not short", until measured).
        self._job_seconds = READY_JOB_SECONDS
        # When a slot last became free or took a waiting message (monotonic time).
        self._last_turnover = 0.0
        # Slots taken by jobs this worker is sending to itself (eager dispatch), not yet in _in_flight.
        self._reserved = 0
        self.processed = 0
        # Jobs this worker ran without receiving them: carried on by their predecessor's message
        # (handed_on) or sent invisible to a free slot of its own (dispatched).
        self.handed_on = 0
        self.dispatched = 0

    # ------------------------------------------------------------------ run control
    async def start_run(self, blueprint_id: str, context: Mapping[str, Any] | None = None,
                        run_id: str | None = None) -> str:
        """Create a run and enqueue its start nodes; returns the run id."""
        return await self.engine.start_run(blueprint_id, context, run_id)

    async def reconcile(self, run_id: str) -> int:
        """Re-enqueue what a stalled run should be doing; returns how many jobs were enqueued."""
        return await self.engine.reconcile(run_id)

    async def resume_with_action(self, run_id: str, action: str | None = None, output: Any = None,
                                 node_id: str | None = None) -> str:
        """Continue an awaiting run; returns the node id it resumed."""
        return await self.engine.resume(run_id, action, output, node_id)

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        """Cancel a run."""
        await self.engine.cancel(run_id, reason)

    async def get_status(self, run_id: str) -> dict[str, Any] | None:
        """The run's status item."""
        return await self.status_store.get(run_id)

    async def wait_for_run(self, run_id: str, timeout: float = 60.0, interval: float = 0.5) -> dict[str, Any]:
        """Poll the status item until the run is no longer running (the seed's client loop, in one call)."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status_store.get(run_id)
            if status is not None and status.get("status") not in ("running",):
                return status
            if time.monotonic() >= deadline:
                return {"runId": run_id, "status": "timeout",
                        "reason": f"run still running after {timeout:g}s", **(status or {})}
            await asyncio.sleep(interval)

    async def run_result(self, run_id: str) -> dict[str, Any] | None:
        """The status item with result.context filled in even when it was too large for the item."""
        status = await self.status_store.get(run_id)
        if status is None:
            return None
        result = status.get("result") or {}
        if result.get("contextTruncated"):
            state = await self.run_store.load(run_id)
            if state is not None:
                status["result"] = {**result, "context": state.context}
        return status

    # ------------------------------------------------------------------ jobs
    async def handle_job(self, job: Job | Mapping[str, Any], *, delivery_id: str | None = None) -> JobOutcome:
        """Execute one job (a Job or its message dict); delivery_id is the queue message's id, if known."""
        if not isinstance(job, Job):
            import json

            job = parse_job(json.dumps(dict(job)))
        with job_span(job) as span:
            heartbeat = asyncio.create_task(self._heartbeat(job))
            try:
                outcome = await self.engine.handle_job(job, delivery_id=delivery_id)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            span.set_attribute("flowcraft.outcome", outcome.status)
        self.processed += 1
        await self.engine.events.emit({"type": "job:processed", "payload": {
            **job.to_dict(), "status": outcome.status}})
        return outcome

    async def handle_message(self, body: bytes | str, *, dequeue_count: int = 1,
                             base64_encoded: bool = False, message_id: str | None = None) -> JobOutcome:
        """Parse and execute one queue message; InvalidJobError when it is not a job of ours.

        Pass the message's id when known: a join's redelivered message then takes back the execution
        claim of its crashed first delivery at once instead of waiting for the claim to expire.
        """
        job = parse_job(body, base64_encoded=base64_encoded)
        job.attempt = max(job.attempt, dequeue_count)
        return await self.handle_job(job, delivery_id=message_id)

    async def poison(self, body: bytes, *, reason: str) -> None:
        """Put a message (its decoded body) on the poison queue, base64 as on the wire; raises if it cannot."""
        if self.poison_queue_client is None:
            raise InvalidJobError(f"no poison queue to move the message to ({reason})")
        await self.poison_queue_client.send_message(base64.b64encode(body).decode())

    async def fail_poisoned(self, body: bytes | str, *, base64_encoded: bool = False,
                            dequeue_count: int | None = None) -> str | None:
        """Mark the run of a message that kept failing as failed; returns the run id, if any.

        A message that is not a job is logged with the reason and dropped: it names no run to fail, and
        raising would only move it on to ``<queue>-poison-poison``.
        """
        try:
            job = parse_job(body, base64_encoded=base64_encoded)
        except Exception as exc:  # NotAJobError, whatever the body holds
            logger.error("poison message is not a Flowcraft job (%s); dropped: %.200r", exc, body)
            return None
        reason = (f"job for node {job.node_id!r} kept failing and was moved to the poison queue"
                  + (f" after {dequeue_count} deliveries" if dequeue_count else ""))
        status = await self.status_store.get(job.run_id)
        if status is None:
            logger.error("poison message for unknown run %s: %s", job.run_id, job.to_dict())
            return None
        await self.engine._fail_run(job.run_id, reason, errors=[{"nodeId": job.node_id, "message": reason,
                                                                 "attempt": dequeue_count or 0}])
        return job.run_id

    # ------------------------------------------------------------------ standalone worker
    async def start(self) -> None:
        """Start polling the queue in the background (see WorkerOptions)."""
        if self._poller is None or self._poller.done():
            self._stopping.clear()
            self.job_queue.local = self
            self._poller = asyncio.create_task(self._poll_loop(), name="flowcraft-poller")

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop polling and wait for in-flight jobs to finish (unfinished ones return to the queue)."""
        self._stopping.set()
        self._room_changed.set()  # a poller waiting for room sees the stop
        self.job_queue.local = None
        if self._poller is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._release_ready()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout)
            for task in pending:
                task.cancel()
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=timeout)

    async def run_forever(self) -> None:
        """Poll until stop() is called."""
        await self.start()
        await self._stopping.wait()
        await self.stop()

    async def _poll_loop(self) -> None:
        opts = self.worker_options
        idle_delay = 0.1
        backlog = False
        # With a backlog, a receive waits (briefly) for room for half a batch, so that a busy worker
        # receives a batch at a time rather than one message each time one job ends. While jobs are
        # short, received messages may also wait for a slot (_ready): a finishing job's slot takes the
        # next at once instead of idling through the gathering and the receive.
        while not self._stopping.is_set():
            await self._give_back_stale()
            gather = self._gather()
            room = self._room()
            if room <= 0 or (backlog and room < gather):
                await self._await_room(gather if backlog else 1, GATHER_SECONDS if room > 0 else None)
                room = self._room()
                if room <= 0:
                    continue
            self._wake.clear()  # a job enqueued from here on makes the next idle pause end early
            try:
                messages = []
                batch = min(32, room)  # 32 is the most one receive returns
                pages = self.queue_client.receive_messages(messages_per_page=batch, max_messages=batch,
                                                           visibility_timeout=opts.visibility_timeout)
                # One request: the SDK's pager would ask again after a short page, and that second
                # request is almost always empty.
                async for page in pages.by_page():
                    messages.extend([msg async for msg in page])
                    break
            except Exception as exc:  # the queue being unreachable must not kill the worker
                logger.warning("receiving from the job queue failed (%s); retrying in %.1fs", exc, idle_delay)
                await self._sleep(idle_delay)
                idle_delay = min(opts.max_poll_interval, idle_delay * 2)
                continue
            received = time.monotonic()
            for msg in messages:
                if self._free_slots() > 0:
                    self._run_in_slot(msg)
                else:
                    self._ready.append((msg, received))
            backlog = len(messages) == batch
            if backlog:
                idle_delay = 0.1
                continue  # a full batch: more are likely waiting
            # Empty, or fewer than asked for: the queue is drained for now. Pause instead of polling it
            # again at once (an empty receive per job in a chain); a job of this process that enqueues
            # work ends the pause at once, work from elsewhere waits at most the pause.
            if await self._sleep(0.1 if messages else idle_delay, wake=True) or messages:
                idle_delay = 0.1
            else:
                idle_delay = min(opts.max_poll_interval, idle_delay * 2)

    def _free_slots(self) -> int:
        return self.worker_options.concurrency - len(self._in_flight) - self._reserved

    def _waiting_places(self) -> int:
        """How many received messages may wait for a slot: twice the slots (at most 32) while jobs are short."""
        if (self._job_seconds >= READY_JOB_SECONDS
                or time.monotonic() - self._last_turnover >= READY_JOB_SECONDS):
            return 0
        # A waiting message waits about (waiting / concurrency) jobs, so at most about two short jobs.
        return min(32, 2 * self.worker_options.concurrency)

    def _gather(self) -> int:
        """Half a batch: the room a busy worker waits for (briefly) before it receives."""
        return max(1, min(32, self.worker_options.concurrency + self._waiting_places()) // 2)

    def _room(self) -> int:
        """Messages a receive may take now: free slots plus free waiting places."""
        return self._free_slots() + self._waiting_places() - len(self._ready)

    def _run_in_slot(self, msg: Any, dequeues: int | None = None) -> None:
        # A fresh context: a job sent from inside another job's span must not inherit it (its parent
        # is the traceparent the message carries, as for a received one).
        task = asyncio.create_task(self._process(msg, dequeues), context=contextvars.Context())
        self._in_flight.add(task)
        task.add_done_callback(self._slot_freed)

    def _slot_freed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._last_turnover = time.monotonic()
        self._room_changed.set()

    async def _await_room(self, wanted: int, seconds: float | None) -> None:
        """Wait until a receive has room for `wanted` messages, or `seconds` (None: until there is any)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stopping.is_set():
            room = self._room()
            if room >= wanted or (deadline is not None and room > 0 and time.monotonic() >= deadline):
                return
            if not self._in_flight and room <= 0:
                # Every slot is reserved by a send in progress: it becomes a task at once.
                await asyncio.sleep(0.001)
                continue
            self._room_changed.clear()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._ready:  # look again in time to give back messages that wait too long
                timeout = min(timeout if timeout is not None else READY_MAX_WAIT, READY_MAX_WAIT / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room_changed.wait(), timeout)
            await self._give_back_stale()

    async def _take_ready(self) -> Any | None:
        """The next received message waiting for a slot, still safely invisible; None when there is none."""
        vt = self.worker_options.visibility_timeout
        while self._ready and not self._stopping.is_set():
            msg, received = self._ready.popleft()
            self._last_turnover = time.monotonic()
            self._room_changed.set()
            if time.monotonic() - received < vt / 2:
                return msg  # its keep-alive, every vt/2 from now, extends it before it reappears
            try:  # it waited long (long jobs in every slot): extend it before it can reappear elsewhere
                msg.pop_receipt = (await self.queue_client.update_message(msg, visibility_timeout=vt)).pop_receipt
            except Exception as exc:
                logger.info("message %s waited too long for a slot (%s); leaving it to its next delivery",
                            msg.id, exc)
                continue
            return msg
        return None

    async def _give_back_stale(self) -> None:
        """Give back to the queue the messages that have waited longer than READY_MAX_WAIT for a slot."""
        stale = []
        while self._ready and time.monotonic() - self._ready[0][1] >= READY_MAX_WAIT:
            stale.append(self._ready.popleft()[0])
        if stale:
            logger.debug("giving %d waiting messages back to the queue: no slot freed for %.1fs",
                         len(stale), READY_MAX_WAIT)
            await self._give_back(stale)

    async def _release_ready(self) -> None:
        """Stopping: make the messages still waiting for a slot visible again at once, for other workers."""
        waiting = [msg for msg, _ in self._ready]
        self._ready.clear()
        await self._give_back(waiting)

    async def _give_back(self, messages: list[Any]) -> None:
        """Make received messages visible again at once, this delivery not counted towards poisoning."""

        async def release(msg: Any) -> None:
            try:
                carried = parse_message(msg.content, base64_encoded=True)
            except Exception:  # not a job: its next delivery moves it to the poison queue
                carried = None
            try:
                if carried is None:
                    await self.queue_client.update_message(msg, visibility_timeout=0)
                else:
                    # This delivery never ran its job, so it must not count towards poisoning the job.
                    await self.job_queue.pass_on(msg, carried.to_job(), dequeue_base=carried.dequeue_base + 1,
                                                 visibility_timeout=0)
            except Exception as exc:  # it reappears after its visibility timeout anyway
                logger.info("could not release message %s (%s)", msg.id, exc)

        await asyncio.gather(*(release(msg) for msg in messages))

    # LocalDispatch (flowcraft_core.azure.queue): the jobs this worker sends that it can run itself.
    def hand_on(self, job: Job) -> bool:
        """Keep a job due now to run next in this job's slot, carried by this job's message."""
        delivery = _CURRENT_DELIVERY.get()
        if (delivery is None or delivery.successor is not None or delivery.job is None
                or job.run_id != delivery.job.run_id or not self.worker_options.eager_dispatch
                or self._stopping.is_set() or not _lives_long(delivery.message)):
            # Only a job of the same run: a routing's jobs are enqueued again when its job is
            # replayed, so holding one back until the job has ended loses nothing in a crash.
            return False
        delivery.successor = job
        return True

    def reserve(self) -> int | None:
        """Reserve a slot for a job this worker is sending; the visibility timeout to send it with."""
        if not self.worker_options.eager_dispatch or self._stopping.is_set() or self._free_slots() <= 0:
            return None
        self._reserved += 1
        return self.worker_options.visibility_timeout

    def dispatch(self, message: Any) -> None:
        """Run a message this worker just sent (invisible) in the slot reserved for it."""
        self._reserved -= 1
        self.dispatched += 1
        self._run_in_slot(message, dequeues=0)  # nobody received it yet

    def release(self) -> None:
        """Give back a slot reserved for a send that failed."""
        self._reserved -= 1

    def wake(self) -> None:
        """End the poller's idle pause: a job of this process went onto the queue."""
        self._wake.set()

    async def _sleep(self, seconds: float, *, wake: bool = False) -> bool:
        """Pause until stop() or the timeout (or, with wake, a local enqueue); True when woken early."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wake:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return bool(done)

    async def _process(self, msg: Any, dequeues: int | None = None) -> None:
        # A finished job may hand its message on to a successor (hand_on): the loop then runs that
        # job in the same slot, as the message's next delivery.
        while msg is not None:
            delivery: _Delivery | None = _Delivery(msg, msg.dequeue_count if dequeues is None else dequeues)
            while delivery is not None:
                delivery = await self._deliver(delivery)
            msg, dequeues = await self._take_ready(), None

    async def _deliver(self, delivery: _Delivery) -> _Delivery | None:
        opts = self.worker_options
        msg = delivery.message
        started = time.monotonic()
        try:
            message = parse_message(msg.content, base64_encoded=True)
        except Exception as exc:  # NotAJobError; anything else is just as much not a job
            logger.error("message %s is not a Flowcraft job (%s); moving it to the poison queue", msg.id, exc)
            await self._to_poison(msg)
            return None
        job = message.to_job()
        # The deliveries of this job (a message handed on keeps the dequeue count of its earlier jobs).
        deliveries = max(1, delivery.dequeues - message.dequeue_base)
        if deliveries > opts.max_dequeue_count:
            logger.error("job %s was delivered %d times; moving it to the poison queue", job.to_dict(),
                         deliveries)
            try:
                await self.fail_poisoned(msg.content, base64_encoded=True, dequeue_count=deliveries)
            except Exception:
                if deliveries <= 2 * opts.max_dequeue_count:
                    # The stores are probably down: keep the message, so that a later delivery fails the run.
                    logger.exception("could not mark the run of poisoned job %s failed", job.to_dict())
                    return None
                # Failing the run keeps failing too: stop the loop; the reconciler still sees the run.
                logger.exception("could not mark the run of poisoned job %s failed after %d deliveries; "
                                 "moving it to the poison queue anyway", job.to_dict(), deliveries)
            await self._to_poison(msg)
            return None
        job.attempt = max(job.attempt, deliveries)
        delivery.job = job
        keeper = asyncio.create_task(self._keep_alive(msg, job))
        token = _CURRENT_DELIVERY.set(delivery)
        try:
            outcome = await self.handle_job(job, delivery_id=msg.id)
        except InvalidJobError as exc:
            logger.error("job %s rejected: %s; moving it to the poison queue", job.to_dict(), exc)
            await self._send_held(delivery)
            await self._to_poison(msg)
            return None
        except Exception:
            # Leave the message: it becomes visible again after the timeout and is retried; after
            # max_dequeue_count deliveries it goes to the poison queue and its run is failed.
            logger.exception("job %s failed on delivery %d; it will be retried", job.to_dict(), deliveries)
            await self._send_held(delivery)
            return None
        finally:
            _CURRENT_DELIVERY.reset(token)
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        elapsed = time.monotonic() - started
        was_short = self._job_seconds < READY_JOB_SECONDS
        self._job_seconds += 0.2 * (elapsed - self._job_seconds)
        if was_short != (self._job_seconds < READY_JOB_SECONDS):
            self._room_changed.set()  # _ready's places appeared or went: a waiting poller looks again
        logger.debug("job %s of run %s: %s in %.3fs", job.key, job.run_id, outcome.status, elapsed)
        if delivery.successor is not None:
            return await self._hand_on_message(delivery)
        await self._retire(msg)
        return None

    async def _retire(self, msg: Any) -> None:
        """Delete a finished job's message, freeing the job's slot before the delete has been answered."""
        # The job's work is committed, so its slot can take the next job while the delete is in flight:
        # a lost delete only means one harmless replay. At most `concurrency` deletes wait at once; past
        # that a slot waits for its own, so a slow queue slows the worker down instead of piling up tasks.
        if len(self._retiring) >= self.worker_options.concurrency:
            await self._delete(msg)
            return
        task = asyncio.create_task(self._delete(msg))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _hand_on_message(self, delivery: _Delivery) -> _Delivery | None:
        """Turn the finished job's message into its successor's (one update, not a send and a delete)."""
        job, msg = delivery.successor, delivery.message
        assert job is not None
        # Stopping: make the successor visible at once, for whichever worker receives it.
        visibility = 0 if self._stopping.is_set() else self.worker_options.visibility_timeout
        try:
            updated = await self.job_queue.pass_on(msg, job, dequeue_base=delivery.dequeues,
                                                   visibility_timeout=visibility)
        except Exception as exc:
            # Whether the update took effect is unknown: send the successor as a message of its own.
            # If the update did take effect, that job runs twice (at least once), which it tolerates.
            logger.warning("could not hand message %s on to job %s (%s); sending that job instead",
                           msg.id, job.to_dict(), exc)
            if await self._send_held(delivery):
                await self._delete(msg)
            return None
        self.handed_on += 1
        if visibility == 0:
            return None
        return _Delivery(updated, delivery.dequeues)

    async def _send_held(self, delivery: _Delivery) -> bool:
        """Send the job a delivery held back for hand-on as a message of its own; False if that failed."""
        job, delivery.successor = delivery.successor, None
        if job is None:
            return True
        try:
            await self.job_queue.send(job)
        except Exception as exc:
            # The finished job's message stays: its redelivery replays the job, which enqueues this again.
            logger.warning("could not send job %s (%s); its predecessor's redelivery will", job.to_dict(), exc)
            return False
        self._wake.set()
        return True

    async def _keep_alive(self, msg: Any, job: Job) -> None:
        # A long node must not reappear on the queue while it runs (the Functions host does this for its
        # own trigger; the standalone worker must do it itself).
        vt = self.worker_options.visibility_timeout
        while True:
            await asyncio.sleep(max(1.0, vt / 2))
            try:
                receipt = await self.queue_client.update_message(msg, visibility_timeout=vt)
                msg.pop_receipt = receipt.pop_receipt
            except Exception as exc:
                logger.warning("could not extend visibility of message %s: %s", msg.id, exc)

    async def _heartbeat(self, job: Job) -> None:
        # A run whose node runs longer than the stalled threshold must not look stalled to the
        # reconciler (which would enqueue the node again): refresh lastUpdated while it runs. The status
        # read also tells the node if its run was cancelled or failed elsewhere meanwhile.
        interval = self.worker_options.heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.status_store.touch(job.run_id)
                status = await self.status_store.get(job.run_id)
                if status is not None and status.get("status") in ("cancelled", "failed"):
                    self.engine.signal_run(job.run_id, str(status.get("reason") or status["status"]))
            except Exception as exc:
                logger.warning("could not refresh run %s: %s", job.run_id, exc)

    async def _delete(self, msg: Any) -> None:
        try:
            await self.queue_client.delete_message(msg)
        except Exception as exc:  # the job is idempotent: a redelivery replays it harmlessly
            logger.warning("could not delete message %s (%s); a redelivery will replay it", msg.id, exc)

    async def _to_poison(self, msg: Any) -> None:
        if self.poison_queue_client is not None:
            try:
                await self.poison_queue_client.send_message(msg.content)
            except Exception as exc:
                logger.error("could not move message %s to the poison queue: %s", msg.id, exc)
                return
        await self._delete(msg)
