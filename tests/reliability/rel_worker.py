"""A worker process for the reliability tests: the production wiring with test knobs.

Like ``python -m flowcraft_core worker`` (settings from the environment, ``build_services``, the adapter's
polling worker, SIGTERM stops it), plus what the tests need:

- ``REL_VISIBILITY_TIMEOUT``: seconds (the settings refuse less than 5; crash tests want 3 so that a
  crashed worker's messages come back quickly);
- ``REL_CONCURRENCY``: jobs at once (1 makes "the n-th time a checkpoint is reached" deterministic);
- ``REL_COUNTER_PREFIX``: count successful final-status writes per run in Redis under this prefix.

``FLOWCRAFT_FAULT_CRASH_AT`` is read by the adapter itself (flowcraft_dev.faults).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parents[1]), str(HERE.parent), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import rel_workflows  # noqa: E402
from rel_support import count_finals  # noqa: E402

from flowcraft_core.azure.services import build_services  # noqa: E402
from flowcraft_core.settings import Settings  # noqa: E402
from tests.helpers import serve_until_signalled  # noqa: E402


async def main() -> int:
    settings = Settings.from_env()
    services = await build_services(settings, registry=rel_workflows.registry, blueprints=rel_workflows.blueprints)
    worker = services.adapter.worker_options
    worker.visibility_timeout = int(os.environ.get("REL_VISIBILITY_TIMEOUT", worker.visibility_timeout))
    worker.concurrency = int(os.environ.get("REL_CONCURRENCY", worker.concurrency))
    worker.max_poll_interval = 0.2
    prefix = os.environ.get("REL_COUNTER_PREFIX")
    if prefix:
        count_finals(services, Counter(), redis_prefix=prefix)
    return await serve_until_signalled(services, f"rel worker ready on queue {settings.queue_name}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("azure", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(asyncio.run(main()))
