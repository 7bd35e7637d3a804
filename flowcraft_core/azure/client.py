"""Client helpers: what the seed's client script does (write the run, enqueue its start jobs, poll the
status item), each in one call.

```python
run_id = await start_run(adapter, "400", {"userId": "user-456", "userPost": "..."})
status = await wait_for_run(adapter, run_id, timeout=60)   # {"status": "completed", "result": {...}}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .adapter import AzureQueueAdapter


async def start_run(adapter: AzureQueueAdapter, blueprint_id: str, context: Mapping[str, Any] | None = None,
                    run_id: str | None = None) -> str:
    """Write the run's status and initial context, enqueue its start nodes; returns the run id."""
    return await adapter.start_run(blueprint_id, context, run_id)


async def get_run_status(adapter: AzureQueueAdapter, run_id: str) -> dict[str, Any] | None:
    """The run's status item (result.context assembled even when too large for the item), or None."""
    return await adapter.run_result(run_id)


async def wait_for_run(adapter: AzureQueueAdapter, run_id: str, timeout: float = 60.0,
                       interval: float = 0.5) -> dict[str, Any]:
    """Poll until the run is no longer running; status "timeout" when the deadline passes first."""
    status = await adapter.wait_for_run(run_id, timeout=timeout, interval=interval)
    if status.get("status") == "completed" and (status.get("result") or {}).get("contextTruncated"):
        return await adapter.run_result(run_id) or status
    return status
