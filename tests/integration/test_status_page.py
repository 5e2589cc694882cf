"""The status page in a real headless browser (Debian's chromium driven by Playwright).

cascade runs with API keys, the simulator, Redis and one batch worker; the browser logs in
through the page's form, sees the runtime, Redis and the worker, then watches a slow batch's
progress bar move and reach done. A screenshot is saved as a test artifact (under
`$CASCADE_TEST_ARTIFACTS`, default `tests/artifacts/`, git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from openai import OpenAI
from playwright.async_api import Browser, Page, async_playwright

from app.api.app import create_app
from app.batches.config import load_batch_settings
from tests.integration.conftest import cascade_settings
from tests.integration.test_batch_support import FAST, request_line, running_worker, upload_jsonl
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

CHROMIUM = "/usr/bin/chromium"
KEY = "browser-test-key"
ITEMS = 6
# Each item's answer: 20 tokens 0.04 s apart, one item at a time (max_running 1), so the
# batch takes several seconds and the page's 2 s poll sees it part way.
ANSWER = " ".join(["word"] * 20)
ARTIFACTS = Path(
    os.environ.get("CASCADE_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts"
)


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless chromium for the block; afterwards no process of it is left (checked by a
    marker flag on its command line, and ended by pid if one was)."""
    marker = f"--cascade-test-run={secrets.token_hex(8)}"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[marker], timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()
    # chromium's helpers exit a moment after the browser; give them up to 5 s
    deadline = time.monotonic() + 5
    left = _processes_with(marker)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        left = _processes_with(marker)
    for pid in left:
        os.kill(pid, 9)
    assert left == [], f"chromium processes left behind: {left}"


async def progress(page: Page, batch_id: str) -> tuple[float, str]:
    """The batch's progress bar value and status as the page shows them now."""
    # One evaluation reads both: two reads could straddle one of the page's own updates.
    row = page.locator(f'tr[data-batch="{batch_id}"]')
    value, status = await row.evaluate(
        "row => [row.querySelector('progress').value, row.querySelector('td.status').innerText]"
    )
    return float(value), str(status).strip()


async def wait_for(
    page: Page, batch_id: str, check: Callable[[float, str], bool], what: str, seconds: float
) -> tuple[float, str]:
    """Read the page (not the API) until `check(value, status)` holds; (value, status)."""
    deadline = time.monotonic() + seconds
    seen: tuple[float, str] | None = None
    while True:
        if await page.locator(f'tr[data-batch="{batch_id}"]').count():
            seen = await progress(page, batch_id)
            if check(*seen):
                return seen
        assert time.monotonic() < deadline, f"the page never showed {what} (last: {seen})"
        await asyncio.sleep(0.1)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.timeout(120)
async def test_status_page_shows_state_and_a_batch_moving_to_done(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(max_running=1)
    sim.sim.add_rule(Rule(output=ANSWER, tpot=0.04))
    settings = cascade_settings(sim, redis_server, api_keys=KEY, state_dir=tmp_path / "state")
    config = load_batch_settings(**FAST)
    app = create_app(settings, batch_settings=config)
    with serve_in_thread(app) as url:
        async with running_worker(settings, config, name="page-worker"), chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            # the page asks for a key; the form sets the login cookie
            response = await page.goto(url + "/")
            assert response is not None and response.status == 401
            await page.fill("#key", KEY)
            await page.click("form#login button[type=submit]")
            await page.wait_for_selector("#runtime-state")

            assert (await page.inner_text("#runtime-state")) == "healthy"
            assert (await page.inner_text("#runtime-version")) == "0.5.23"
            assert (await page.inner_text("#runtime-model")) == "qwen3.6-27b-cascade"
            assert (await page.inner_text("#runtime-spec")) == "2.50"
            assert (await page.inner_text("#redis-state")) == "ok"
            assert (await page.inner_text("#redis-memory")).strip() not in ("", "–")
            worker_row = page.locator('tr[data-worker="page-worker"]')
            assert "alive" in await worker_row.inner_text()

            with OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0) as client:
                lines = [request_line(f"item-{i}", f"question {i}") for i in range(ITEMS)]
                file_id = await asyncio.to_thread(upload_jsonl, client, lines)
                batch = await asyncio.to_thread(
                    client.batches.create,
                    input_file_id=file_id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
            # part way: the page's own poll moved the bar, and moves it again
            first, _ = await wait_for(
                page, batch.id, lambda value, _: 0 < value < ITEMS, "a part-way bar", 30
            )
            second, status = await wait_for(
                page, batch.id, lambda value, _: value > first, "the bar moving on", 30
            )
            assert status == "in_progress" or second == ITEMS
            done, status = await wait_for(
                page, batch.id, lambda _, status: status == "completed", "completed", 45
            )
            assert done == ITEMS
            row = page.locator(f'tr[data-batch="{batch.id}"]')
            assert (await row.locator(".count").inner_text()).strip() == f"{ITEMS}/{ITEMS}"
            assert (await row.locator("td.failed").inner_text()).strip() == "0"
            assert await row.locator("a", has_text="report").get_attribute("href") == (
                f"/status/batches/{batch.id}/report"
            )

            await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
            shot = ARTIFACTS / "status_page.png"
            await page.screenshot(path=str(shot), full_page=True)

            # the link opens the batch's HTML report, with the login cookie
            await row.locator("a", has_text="report").click()
            await page.wait_for_selector("section.card")
            assert f"Batch {batch.id}" in await page.title()
            assert f"{ITEMS} completed" in await page.inner_text(".summary")
            answers = await page.locator(".answer").all_inner_texts()
            assert answers == [ANSWER] * ITEMS
    data = shot.read_bytes()
    width, height = png_size(data)
    assert width == 1280 and 600 <= height <= 10_000
    assert 10_000 < len(data) < 5_000_000
