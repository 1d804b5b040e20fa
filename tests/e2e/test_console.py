"""The web console in headless Chromium (Debian's ``chromium``, driven by Playwright) on the whole local stack.

One spoken file, named like an HTML injection, goes in through the API. The console sees it reach
``done`` without a reload, shows it as text, plays it (a clicked word seeks the player to its start),
downloads the SRT that is in the bucket, explains the plan and draws the metrics, from 360 to 1920 px.
Screenshots land in ``build/console-screenshots/`` (the README shows copies from ``docs/images/``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parascribe import sdk
from parascribe.config import load_settings
from tests.e2e.conftest import Stack, words
from tests.speech import speak, word_error_rate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPEECH = ("The lighthouse keeper climbed the stairs every evening. "
          "He lit the lamp, wiped the glass, and watched the ships sail home.")
FILENAME = "<img src=x onerror=alert(1)><script>alert(2)<script>.wav"
WAIT_MS = 420_000
SHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM_PATH"), "chromium", "chromium-browser"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (`make browser-deps` installs it): the console's browser tests "
                    "cannot run")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium executable on PATH (`make browser-deps` installs Debian's chromium; or set "
                    "CHROMIUM_PATH): the console's browser tests cannot run")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(browser: Any, stack: Stack) -> dict[str, Any]:
    """The console's URL (from ``parascribe console``), and the API's address and key."""
    proc = stack.cli("console", "--no-open", timeout=60)
    assert proc.returncode == 0, proc.stderr
    state = stack.state()
    return {"url": proc.stdout.strip(), "api": f"http://127.0.0.1:{state['ports']['api']}",
            "key": state["api_key"], "state": state}


def _planned(job: sdk.Job, timeout_s: float = 120.0) -> None:
    """Wait until the router has written the job's manifest (its chunks are known)."""
    deadline = time.monotonic() + timeout_s
    while not job.status().get("chunks_total"):
        assert time.monotonic() < deadline, f"{job.id} was not planned within {timeout_s:.0f} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def request_id(site: dict[str, Any], stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The console's job. It is planned while another job's request waits on a frozen Deepgram worker, so its
    plan meets a real Deepgram queue, which the job page shows."""
    folder = tmp_path_factory.mktemp("console")
    wav = speak(SPEECH, folder / FILENAME, rate=150)
    ahead = speak("This one waits for Deepgram.", folder / "ahead.wav", rate=150)
    client = sdk.Client(site["api"], site["key"])
    try:
        with stack.paused("deepgram_worker"):
            first = sdk.submit(ahead, method="deepgram", client=client, progress=False)
            _planned(first)
            time.sleep(load_settings().backlog_cache_seconds + 1)  # the router's cached read is from before it
            job = sdk.submit(wav, method="gpu", client=client, progress=False)
            _planned(job)
        held = first.wait(timeout=WAIT_MS / 1000)  # the request the frozen worker held goes through once it thaws
        assert held["state"] == "done", held
        return job.id
    finally:
        client.close()


class Page:
    """A page that records dialogs, script errors and CSP violations, which no test may cause."""

    def __init__(self, browser: Any, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.on("pageerror", lambda e: self.problems.append(f"error: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))

    def close(self) -> None:
        self.context.close()

    def fits(self) -> bool:
        return bool(self.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    page = Page(browser)
    try:
        yield page
    finally:
        page.close()
    assert page.problems == []


def test_without_the_key_the_console_asks_for_it_and_shows_nothing(tab: Page, site: dict[str, Any]) -> None:
    tab.page.goto(site["api"] + "/console/")
    tab.page.wait_for_selector("#view-login:not([hidden])")
    assert tab.page.locator("#jobs-body tr").count() == 0
    tab.page.fill("#login-key", "psk_wrong")
    tab.page.press("#login-key", "Enter")
    tab.page.wait_for_selector("#login-error:has-text('refused')")
    tab.problems[:] = [p for p in tab.problems if "401" not in p]  # the refused call itself


def test_the_jobs_table_follows_the_job_to_done_without_a_reload(tab: Page, site: dict[str, Any],
                                                                 request_id: str) -> None:
    page = tab.page
    page.goto(site["url"])
    row = page.locator(f'tr[data-id="{request_id}"]')
    row.wait_for(timeout=60_000)
    page.evaluate("window.__sameDocument = true")
    page.wait_for_selector(f'tr[data-id="{request_id}"][data-state="done"]', timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    assert row.locator("td.name a").inner_text() == FILENAME, "the file name is shown as text"
    assert row.locator("img, script").count() == 0 and page.locator("#jobs-body img").count() == 0
    assert row.locator(".state").inner_text() == "done" and "$" in row.locator("td[data-label=Cost]").inner_text()
    assert "#key=" not in page.url, "the key leaves the address bar once read"
    tab.shot("jobs")


def test_the_job_page_plays_seeks_downloads_and_explains(tab: Page, site: dict[str, Any], request_id: str,
                                                         stack: Stack, tmp_path: Path) -> None:
    page = tab.page
    page.goto(site["url"])
    page.locator(f'tr[data-id="{request_id}"] td.name a').click()
    page.wait_for_selector("#transcript button.w", timeout=60_000)
    assert page.locator("#job-title").inner_text() == FILENAME
    shown = [w.strip() for w in page.locator("#transcript button.w").all_inner_texts()]
    assert word_error_rate(" ".join(words(SPEECH)), " ".join(shown)) <= 0.35, shown

    page.wait_for_function("document.getElementById('player').readyState >= 1", timeout=30_000)
    buttons = page.locator("#transcript button.w")
    target = next(i for i in range(buttons.count()) if float(buttons.nth(i).get_attribute("data-start") or 0) > 1.5)
    start = float(buttons.nth(target).get_attribute("data-start") or 0)
    buttons.nth(target).click()
    page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {start}) < 0.05")
    assert "cur" in (buttons.nth(target).get_attribute("class") or "")
    other = buttons.nth(target + 2)
    other.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"Math.abs(document.getElementById('player').currentTime - {other.get_attribute('data-start')}) < 0.05")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('w') && "
                         "getComputedStyle(document.activeElement).outlineStyle === 'solid'"), "visible focus"

    status = httpx.get(f"{site['api']}/v1/jobs/{request_id}", headers={"authorization": f"Bearer {site['key']}"}).json()
    stored = stack.read_gs(status["outputs"]["srt"])
    with page.expect_download() as download:
        page.click('#downloads a[data-format="srt"]')
    saved = tmp_path / "transcript.srt"
    download.value.save_as(str(saved))
    assert saved.read_bytes() == stored

    assert page.locator("#plan-summary").inner_text().strip()
    facts = dict(zip(page.locator("#plan-facts dt").all_inner_texts(),
                     page.locator("#plan-facts dd").all_inner_texts(), strict=True))
    assert re.fullmatch(r"\d+ requests? \(\d+ s of audio\), \d+ at a time", facts["Deepgram queue"]), facts
    assert page.locator("#chunks-body tr").count() == status["chunks_total"]
    assert "delivered" in page.locator('[data-delivery="webhook"]').inner_text()
    tab.shot("job")


def test_the_metrics_page_charts_the_jobs_cost_speed_and_count(tab: Page, site: dict[str, Any],
                                                               request_id: str) -> None:
    page = tab.page
    page.goto(site["url"])
    page.wait_for_selector("#view-jobs:not([hidden])")
    page.evaluate("location.hash = '#/metrics'")
    page.wait_for_selector("section.card", timeout=30_000)
    for title in ("Cost by method", "RTFx by engine", "Jobs by status"):
        card = page.locator(f'section.card[data-title^="{title}"]')
        card.wait_for()
        assert int(card.get_attribute("data-points") or 0) > 0, title
        assert card.locator("canvas").count() >= 1, f"{title} is drawn"
    assert float(page.locator('section.card[data-title^="Cost, last 24 h"]').get_attribute("data-value") or 0) > 0
    tab.shot("metrics")


@pytest.mark.parametrize("width", [360, 1920])
def test_every_page_fits_from_360_to_1920_px(browser: Any, site: dict[str, Any], request_id: str,
                                             width: int) -> None:
    tab = Page(browser, width)
    try:
        page = tab.page
        page.goto(site["url"])
        page.wait_for_selector(f'tr[data-id="{request_id}"]')
        assert tab.fits(), f"the jobs page overflows at {width} px"
        page.evaluate(f"location.hash = '#/job/{request_id}'")
        page.wait_for_selector("#transcript button.w", timeout=60_000)
        assert tab.fits(), f"the job page overflows at {width} px"
        page.evaluate("location.hash = '#/metrics'")
        page.wait_for_selector("section.card canvas", timeout=30_000)
        assert tab.fits(), f"the metrics page overflows at {width} px"
        if width == 360:
            tab.shot("metrics-360")
    finally:
        tab.close()
    assert tab.problems == []


def test_redeliver_asks_the_sweeper_to_send_the_webhook_again(tab: Page, site: dict[str, Any],
                                                              request_id: str) -> None:
    page = tab.page
    page.goto(site["url"])
    page.wait_for_selector(f'tr[data-id="{request_id}"]')
    page.evaluate(f"location.hash = '#/job/{request_id}'")
    page.wait_for_selector('[data-delivery="webhook"]', timeout=60_000)
    page.click("#redeliver")
    page.wait_for_selector("#redeliver-msg:has-text('Queued')")
    page.wait_for_selector('[data-delivery="webhook"]:has-text("webhook_failed")', timeout=10_000)
    assert "redelivery requested" in page.locator("#deliveries").inner_text()


def test_a_running_job_is_cancelled_from_its_page_in_two_clicks(tab: Page, site: dict[str, Any], stack: Stack,
                                                                 tmp_path: Path) -> None:
    with stack.paused("asr_worker"):  # frozen, so the job is still running whatever this machine's speed
        _cancel_from_the_page(tab, site, speak(SPEECH, tmp_path / "cancelled lighthouse.wav", rate=150))


def _cancel_from_the_page(tab: Page, site: dict[str, Any], wav: Path) -> None:
    client = sdk.Client(site["api"], site["key"])
    try:
        job_id = sdk.submit(wav, method="gpu", client=client, progress=False).id
    finally:
        client.close()
    page = tab.page
    page.goto(site["url"])
    page.wait_for_selector(f'tr[data-id="{job_id}"]')  # the key is read from the URL; then the job's page
    page.evaluate(f"location.hash = '#/job/{job_id}'")
    button = page.locator("#cancel-job")
    button.wait_for(state="visible", timeout=30_000)
    button.click()
    assert button.inner_text() == "Confirm: cancel this job", "the first click only arms it"
    button.click()
    page.wait_for_selector("#cancel-msg:has-text('Cancel requested')", timeout=30_000)
    page.wait_for_selector("#job-state:has-text('failed')", timeout=120_000)
    assert "cancelled at the user's request" in page.locator("#job-reason").inner_text()
    page.wait_for_selector("#cancel-job", state="hidden")
    tab.shot("job-cancelled")


def test_the_state_filter_is_applied_by_the_api_and_keeps_the_focus(tab: Page, site: dict[str, Any],
                                                                    request_id: str) -> None:
    page = tab.page
    page.goto(site["url"])
    page.wait_for_selector(f'tr[data-id="{request_id}"][data-state="done"]', timeout=WAIT_MS)
    page.select_option("#state-filter", "done")
    page.wait_for_selector('#jobs-body tr:not([data-state="done"])', state="detached", timeout=30_000)
    assert page.locator(f'tr[data-id="{request_id}"]').is_visible()
    page.focus("#state-filter")  # as a keyboard user: the filter keeps the focus while the table is fetched again
    page.select_option("#state-filter", "failed")
    # Fetched again with ?state=failed: the done job is gone from the table, not merely hidden.
    page.wait_for_selector(f'tr[data-id="{request_id}"]', state="detached", timeout=30_000)
    assert page.evaluate("document.activeElement.id") == "state-filter"
    assert all(s == "failed" for s in page.locator("#jobs-body tr").evaluate_all("rs => rs.map(r => r.dataset.state)"))
    page.select_option("#state-filter", "")
    page.wait_for_selector(f'tr[data-id="{request_id}"]', timeout=30_000)
