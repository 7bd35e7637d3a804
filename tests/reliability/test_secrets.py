"""Secrets never reach the logs, even at DEBUG for every logger (the Azure SDKs' included).

A distributed run goes through a worker whose Redis has a password and whose Cosmos DB key is a fresh
random one, with the failure paths that log the most: a node that fails, Cosmos DB answering 503 (retry
warnings), a burst longer than the retry budget (the adapter logs the job's traceback and the message is
redelivered), and a hostile message. Then the production entry point, ``python -m flowcraft_core -v
worker``, runs a workflow with the same settings. Neither the captured records (messages, arguments,
tracebacks) nor the CLI's output may contain the Azurite account key, the Cosmos DB key, the Redis
password, or any connection string.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import secrets
import sys
from pathlib import Path

import pytest
from rel_support import (
    REPO_ROOT,
    CosmosFaultProxy,
    PrivateRedis,
    RelHarness,
    stop_process,
    wait_final,
    worker_env,
)
from rel_workflows import blueprints, registry

from flowcraft_core.azure.retry import RetryPolicy
from flowcraft_core.azure.services import plain_queue_client
from flowcraft_dev.emulators import AZURITE_ACCOUNT_KEY

pytestmark = pytest.mark.slow


def leaks(text: str, secret_values: list[str]) -> list[str]:
    return [s[:6] + "..." for s in secret_values if s and s in text]


def record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    if record.exc_text:
        parts.append(record.exc_text)
    return "\n".join(parts)


async def test_no_secret_is_logged_at_debug(rel: RelHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = secrets.token_hex(16)
    cosmos_key = base64.b64encode(os.urandom(64)).decode()
    redis = PrivateRedis(tmp_path / "redis", password=password)
    redis.start()
    port = int(re.search(r"https://127\.0\.0\.1:(\d+)/", rel.env.cosmos_connection_string).group(1))  # type: ignore[union-attr]
    proxy = CosmosFaultProxy(port, tmp_path / "tls")
    await proxy.start()
    cosmos_cs = proxy.connection_string(cosmos_key)
    secret_values = [AZURITE_ACCOUNT_KEY, cosmos_key, password, redis.url, cosmos_cs, rel.env.queue_connection_string]
    settings = {"COSMOS_DB_CONNECTION_STRING": cosmos_cs, "REDIS_URL": redis.url}
    try:
        caplog.set_level(logging.DEBUG)
        for name in ("azure", "azure.core.pipeline.policies.http_logging_policy", "azure.cosmos", "redis", "aiohttp"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        worker = await rel.build(registry, blueprints, visibility_timeout=2, count_in_redis=False,
                                 COSMOS_DB_CONNECTION_STRING=cosmos_cs, REDIS_URL=redis.url)

        ok = await worker.adapter.start_run("fan", {"token": "s1"})
        failing = await worker.adapter.start_run("failing", {"token": "s2"})
        assert (await wait_final(worker, ok))["status"] == "completed"
        assert (await wait_final(worker, failing))["status"] == "failed"

        proxy.fail_next(503, 3)  # retried, with warnings
        retried = await worker.adapter.start_run("fan", {"token": "s3"})
        assert (await wait_final(worker, retried))["status"] == "completed"

        # Longer than the budget: the job raises, the adapter logs it with its traceback, the message
        # comes back after the visibility timeout and the run still completes.
        exhausted = await worker.adapter.start_run("fan", {"token": "s4"})
        worker.adapter.run_store.retry_policy = RetryPolicy(max_attempts=2, initial_delay=0.05, max_total_seconds=1)
        proxy.fail_next(503, 8, queries_only=True)  # the job's load of the run
        assert (await wait_final(worker, exhausted, timeout=40))["status"] == "completed"
        assert any(r.exc_info for r in caplog.records if r.name == "flowcraft.azure"), "no traceback was logged"

        async with plain_queue_client(rel.env.queue_connection_string, rel.env.queue_name) as qc:
            await qc.send_message("not a job: " + "x" * 100)
        assert any("not a Flowcraft job" in m for m in await _wait_for_log(caplog, "not a Flowcraft job"))

        assert len(caplog.records) > 200, "DEBUG logging was not captured"
        assert any(r.name.startswith("azure") for r in caplog.records), "the Azure SDKs' logs were not captured"
        found = {r.name: leaks(record_text(r), secret_values) for r in caplog.records}
        assert not {k: v for k, v in found.items() if v}, found
        assert not leaks(caplog.text, secret_values)

        # The production entry point, verbose.
        log_path = tmp_path / "cli-worker.log"
        env = worker_env(rel.settings_env(**settings))
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "flowcraft_core", "-v", "worker", env=env, stdout=log, stderr=log,
                cwd=str(REPO_ROOT), start_new_session=True)
        try:
            via_cli = await worker.adapter.start_run("fan", {"token": "s5"})
            await rel.stop(worker)  # leave the run to the CLI worker
            assert (await wait_final(worker, via_cli, timeout=40))["status"] == "completed"
        finally:
            await stop_process(proc)
        cli_log = log_path.read_text(errors="replace")
        assert "worker polling queue" in cli_log, cli_log[-2000:]
        assert not leaks(cli_log, secret_values), cli_log[-3000:]
    finally:
        await rel.close()
        await proxy.close()
        redis.stop()


async def _wait_for_log(caplog: pytest.LogCaptureFixture, needle: str, timeout: float = 10) -> list[str]:
    from helpers import wait_until

    return await wait_until(lambda: [m for m in caplog.messages if needle in m], timeout=timeout,
                            message=f"log line with {needle!r}")
