"""The run view in a real headless Chromium (Debian's), served by the local host on the emulators.

Playwright drives ``/usr/bin/chromium`` directly (``executable_path``; no browser download). The page
is opened as a user opens it, with the function key in ``?code=``, and the test checks what a user
sees: the run just started in the list, a failed node drawn in the failed color, one timeline bar per
node execution, the final context, and a run cancelled from the page. It saves a screenshot; with
FLOWCRAFT_UPDATE_SCREENSHOT=1 it refreshes docs/run-view.png, which the README shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from test_app_e2e import KEY, HostProcess, _drop_resources, local_host

from flowcraft_dev.emulators import Emulators

CHROMIUM = Path("/usr/bin/chromium")
# The README's picture. Refreshed only on request (FLOWCRAFT_UPDATE_SCREENSHOT=1), so that a test run does not
# leave a tracked file changed; otherwise the screenshot goes to the test's temporary folder.
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "run-view.png"
FAILED_FILL = "rgb(198, 40, 40)"  # --failed: #c62828
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def api(host: HostProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{host.api}/{path}", data=data, method=method,  # noqa: S310
                                     headers={"x-functions-key": KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_status(host: HostProcess, run_id: str, wanted: set[str], page: Page) -> dict[str, Any]:
    deadline = 30_000
    while deadline > 0:
        _, body = api(host, "GET", f"runs/{run_id}")
        if body["status"] in wanted:
            return dict(body)
        page.wait_for_timeout(100)
        deadline -= 100
    raise AssertionError(f"run {run_id} did not reach {wanted}")


@pytest.fixture(scope="module")
def view_host(emulators: Emulators, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    with local_host(emulators, tmp_path_factory.mktemp("view") / "host.log") as proc:
        yield proc
        env = proc.env
    asyncio.run(_drop_resources(env))


@pytest.fixture
def page() -> Iterator[Page]:
    assert CHROMIUM.exists(), "the browser test needs Debian's chromium at /usr/bin/chromium (make deps installs it)"
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="run-view-profile-") as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                        args=LAUNCH_ARGS, viewport={"width": 1400, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_the_run_view_shows_lists_draws_and_cancels_runs(view_host: HostProcess, page: Page, tmp_path: Path) -> None:
    status, failed = api(view_host, "POST", "runs", {"blueprintId": "e2e-fail"})
    assert status == 202
    status, sleeping = api(view_host, "POST", "runs", {"blueprintId": "e2e-sleep"})
    assert status == 202
    wait_status(view_host, failed["runId"], {"failed"}, page)
    wait_status(view_host, sleeping["runId"], {"running"}, page)

    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{view_host.api}/view?code={KEY}")
    # The list shows the run just started (newest first).
    first_row = page.locator("tbody#runs tr[data-run-id]").first
    expect(first_row).to_have_attribute("data-run-id", sleeping["runId"])
    expect(page.locator(f'tr[data-run-id="{failed["runId"]}"] .status')).to_have_text("failed")

    # The failed run: its failed node is drawn in the failed color, one timeline bar per execution.
    page.locator(f'tr[data-run-id="{failed["runId"]}"]').click()
    node = page.locator('#graph g.node[data-node-id="charge"]')
    expect(node).to_have_attribute("data-state", "failed")
    fill = node.locator("rect").evaluate("el => getComputedStyle(el).fill")
    assert fill == FAILED_FILL
    # The node after the failure never ran: drawn as skipped, since the run ended.
    expect(page.locator('#graph g.node[data-node-id="receipt"]')).to_have_attribute("data-state", "skipped")
    _, history = api(view_host, "GET", f"runs/{failed['runId']}/history")
    bars = page.locator("#timeline rect.bar")
    expect(bars).to_have_count(len(history["nodes"]))
    assert len(history["nodes"]) >= 1
    expect(page.locator("#errors")).to_contain_text("the payment provider said no")

    # The running run: cancel it from the page.
    page.locator(f'tr[data-run-id="{sleeping["runId"]}"]').click()
    expect(page.locator("#d-run")).to_have_text(sleeping["runId"])
    expect(page.locator('#graph g.node[data-node-id="start"]')).to_have_attribute("data-state", "completed")
    expect(page.locator('#graph g.node[data-node-id="after_nap"]')).to_have_attribute("data-state", "pending")
    expect(page.locator("#timeline rect.bar")).to_have_count(
        len(api(view_host, "GET", f"runs/{sleeping['runId']}/history")[1]["nodes"]))
    page.locator("#cancel").click()
    expect(page.locator("#d-status")).to_have_text("cancelled")
    assert api(view_host, "GET", f"runs/{sleeping['runId']}")[1]["status"] == "cancelled"
    expect(page.locator(f'tr[data-run-id="{sleeping["runId"]}"] .status')).to_have_text("cancelled")

    # A use case with branches and a join: one bar per execution, the final context; the README's picture.
    status, moderation = api(view_host, "POST", "runs", {"blueprintId": "400", "context": {
        "userId": "user-456", "userPost": "Hi, my email is test@example.com"}})
    assert status == 202
    wait_status(view_host, moderation["runId"], {"completed"}, page)
    page.locator("#refresh").click()
    page.locator(f'tr[data-run-id="{moderation["runId"]}"]').click()
    expect(page.locator("#d-status")).to_have_text("completed")
    _, history = api(view_host, "GET", f"runs/{moderation['runId']}/history")
    assert len(history["nodes"]) >= 3
    expect(page.locator("#timeline rect.bar")).to_have_count(len(history["nodes"]))
    for entry in history["nodes"]:
        expect(page.locator(f'#graph g.node[data-node-id="{entry["nodeId"]}"]')).to_have_attribute(
            "data-state", "completed")
    expect(page.locator("#context")).to_contain_text("[REDACTED]")
    screenshot = (README_SCREENSHOT if os.environ.get("FLOWCRAFT_UPDATE_SCREENSHOT") == "1"
                  else tmp_path / "run-view.png")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert errors == []


def test_the_view_needs_the_function_key_like_the_data_it_shows(view_host: HostProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{view_host.api}/view", timeout=30)  # noqa: S310
    assert refused.value.code == 401
    with urllib.request.urlopen(f"{view_host.api}/view?code={KEY}", timeout=30) as response:  # noqa: S310
        assert response.headers["Content-Type"].startswith("text/html")
        assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
        html = response.read().decode()
    # Everything it runs is inline: no script from elsewhere, so it works offline.
    script = html.split("<script>")[1].split("</script>")[0]
    assert "<script src" not in html and "https://" not in script
    assert "http://" not in script.replace("http://www.w3.org/2000/svg", "")
