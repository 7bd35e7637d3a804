"""Operating runs, whatever the stores: list pages, continuation tokens, history, purge and retention.

Pure code over the store protocols (``flowcraft_core.protocols``): the HTTP API, the CLI and the timer
function call it with the Cosmos/Redis stores, the unit tests with the in-memory ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from .errors import RunStateError, UnknownRunError
from .protocols import FINAL_STATUSES, CoordinationStore, RunPage, RunQuery, RunState, RunStore, StatusStore

logger = logging.getLogger("flowcraft.runs")

DEFAULT_TOP = 100
MAX_TOP = 1000
TOKEN_VERSION = 1


class InvalidContinuationError(ValueError):
    """A continuation token that this API did not issue, or issued for other filters."""


def _fingerprint(query: RunQuery) -> str:
    data = [sorted(query.statuses), query.blueprint_id, query.created_from, query.created_to, query.ended_before]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def encode_continuation(query: RunQuery, store_token: str | None) -> str | None:
    """The opaque token a client hands back: the store's continuation bound to the filters it belongs to."""
    if store_token is None:
        return None
    data = json.dumps({"v": TOKEN_VERSION, "f": _fingerprint(query), "c": store_token}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_continuation(query: RunQuery, token: str) -> str:
    """The store's continuation inside a client's token; InvalidContinuationError when it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidContinuationError("continuationToken is malformed") from None
    if not isinstance(data, dict) or data.get("v") != TOKEN_VERSION or not isinstance(data.get("c"), str):
        raise InvalidContinuationError("continuationToken is malformed")
    if data.get("f") != _fingerprint(query):
        # A continuation resumes one query: applying it to other filters would skip or repeat runs.
        raise InvalidContinuationError("continuationToken belongs to a listing with other filters")
    return str(data["c"])


async def list_runs(store: StatusStore, query: RunQuery, *, top: int = DEFAULT_TOP,
                    continuation_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of status items and the token of the next page (None on the last)."""
    if not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be 1-{MAX_TOP}")
    store_token = None if continuation_token is None else decode_continuation(query, continuation_token)
    try:
        page: RunPage = await store.list_runs(query, top, store_token)
    except ValueError as exc:
        raise InvalidContinuationError(f"continuationToken is not valid: {exc}") from None
    return page.items, encode_continuation(query, page.continuation)


# ------------------------------------------------------------------------------------------------ history
def history(state: RunState) -> list[dict[str, Any]]:
    """One entry per node execution, in commit order, with its timing and attempts."""
    entries = []
    for rec in sorted(state.records.values(), key=lambda r: (r.seq, r.key)):
        if rec.status == "external":
            continue  # a write from outside the run (CosmosDbContext), not an execution
        duration = (rec.finished_at - rec.started_at
                    if rec.started_at is not None and rec.finished_at is not None else None)
        entry: dict[str, Any] = {"nodeId": rec.node_id, "iteration": rec.iteration, "status": rec.status,
                                 "attempts": rec.attempts, "startedAt": rec.started_at,
                                 "finishedAt": rec.finished_at, "durationMs": duration}
        if rec.error:
            entry["error"] = rec.error
        entries.append(entry)
    return entries


# -------------------------------------------------------------------------------------------------- purge
@dataclass
class PurgeStores:
    """The three stores a run lives in."""

    run_store: RunStore
    status_store: StatusStore
    coordination: CoordinationStore


async def purge_run(stores: PurgeStores, run_id: str, *, status: dict[str, Any] | None = None) -> int:
    """Delete an ended run from every store; returns how many Cosmos items went.

    UnknownRunError when there is no such run, RunStateError when it has not ended. The status item
    goes last: a purge interrupted half way leaves the run listed, so the next purge finishes it.
    """
    item = status if status is not None else await stores.status_store.get(run_id)
    if item is None:
        raise UnknownRunError(f"run {run_id!r} does not exist")
    if item.get("status") not in FINAL_STATUSES:
        raise RunStateError(f"run {run_id!r} is {item.get('status')}: only an ended run can be purged "
                            "(cancel it first)")
    count = 0
    state = await stores.run_store.load(run_id)
    for rec in state.records.values() if state is not None else ():
        # A parent's child runs (subflows, every attempt) go first: a purge interrupted half way still
        # lists the parent, whose next purge finds the children left.
        for child_id in (rec.child or {}).get("runs") or ():
            try:
                count += await purge_run(stores, str(child_id))
            except UnknownRunError:
                continue
    count += await stores.run_store.delete_run(run_id)
    await stores.coordination.purge_run(run_id)
    if await stores.status_store.delete(run_id):
        count += 1
    return count


@dataclass
class RetentionStats:
    """What one retention pass purged."""

    runs: int = 0
    items: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, int]:
        """camelCase form for logs."""
        return {"purgedRuns": self.runs, "purgedItems": self.items, "failedRuns": self.failed}


async def purge_expired(stores: PurgeStores, ended_before: float, *, page_size: int = 100,
                        max_pages: int = 10) -> RetentionStats:
    """Purge ended runs last updated before ``ended_before``, at most ``max_pages`` pages per call.

    Idempotent: a run purged twice (two timer instances, a retry) is simply gone the second time. Each
    page is queried afresh, since purging removes what the previous page listed.
    """
    stats = RetentionStats()
    query = RunQuery(ended_before=ended_before)
    for _ in range(max_pages):
        page = await stores.status_store.list_runs(query, page_size)
        for item in page.items:
            try:
                stats.items += await purge_run(stores, str(item["id"] if "id" in item else item["runId"]),
                                               status=item)
                stats.runs += 1
            except UnknownRunError:
                continue
            except Exception:
                stats.failed += 1
                logger.exception("retention: purging run %s failed", item.get("runId"))
        if page.continuation is None or len(page.items) < page_size or stats.failed:
            break
    return stats
