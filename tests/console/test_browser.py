"""End to end in a real browser: Debian's chromium driven by Playwright (never a downloaded
browser) against `serving console` and a running local stack. The page shows the predictors
and weights; a rollout started from the page advances; abort from the page gives stable 100%
again. A screenshot of each state goes to reports/console/ for a person to look at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.server import free_port

from ..router.conftest import Stack
from .conftest import BASELINE

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "reports" / "console"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium: 'make browser' or "
           "'apt-get install -y chromium' (Playwright drives it; no browser is downloaded)")


@pytest.fixture(scope="module")
def console_url(console_stack: Stack, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("console") / "console.log"
    values = console_stack.state_dir.parent / "values.yaml"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "console", "--values", str(values),
             "--state-dir", str(console_stack.state_dir), "--port", str(port),
             "--refresh", "1"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _end_controller(console_stack.state_dir)


def _end_controller(state_dir: Path) -> None:
    """The `serving rollout run` the page started ends by itself once the rollout has ended;
    after a failed test it might not have."""
    try:
        pid = int(json.loads((state_dir / "console-controller.json").read_text())["pid"])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def test_watch_start_and_abort_a_rollout_in_chromium(at_baseline: Stack, console_url: str
                                                     ) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # the machine may be busy with other tests
    SHOTS.mkdir(parents=True, exist_ok=True)
    token = at_baseline.state["adminToken"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.set_default_timeout(60_000)
            page.goto(console_url)
            now = page.locator("table").first

            def shot(name: str) -> None:  # from the top: Now and Rollout
                page.get_by_text("Model rollout console").scroll_into_view_if_needed()
                page.screenshot(path=SHOTS / name, full_page=True)

            def row(predictor: str) -> object:
                return now.locator("tr", has=page.locator("td", has_text=predictor))

            # 1. what runs: predictors, versions, weights (the first run imports the most)
            expect(row("stable")).to_contain_text("100%", timeout=120_000)
            expect(row("shadow")).to_contain_text("mirrors 100%")
            expect(page.get_by_text("No rollout yet.")).to_be_visible()
            expect(page.get_by_text("agrees with stable")).to_be_visible()
            shot("1-now.png")

            # 2. start a rollout of v2 from the page (confirmation + admin token)
            page.get_by_role("button", name="Start", exact=True).click()
            expect(page.get_by_text("Start rolling out v2?")).to_be_visible()
            page.get_by_label("Admin token", exact=True).fill(token)
            page.get_by_label("Admin token", exact=True).press("Enter")
            page.get_by_role("button", name="Yes, start").click()
            expect(page.get_by_text("Rollout of v2 is in progress")).to_be_visible()
            # the controller records the step, then starts the canary's model server: the
            # rollout says 20% from then on; the router shows the canary once it is ready
            expect(page.get_by_text("stable (v1) 80%, canary (v2) 20%")).to_be_visible()
            expect(row("canary")).to_be_visible()
            shot("2-rollout-at-20.png")

            # 3. it advances by itself (the controller runs 'serving rollout run'): past the
            # 5 s pause to 50%, then holds at the pause-until-resume step
            expect(page.get_by_text("Rollout of v2 is paused")).to_be_visible()
            expect(row("canary")).to_contain_text("50%")
            expect(page.get_by_text("step 4 of 4")).to_be_visible()
            shot("3-rollout-at-50-paused.png")
            assert {p["name"]: p["traffic"] for p in at_baseline.status()["predictors"]} == {
                "stable": 50, "canary": 50, "shadow": 100}

            # 4. abort from the page: all traffic back to stable
            page.get_by_role("button", name="Abort", exact=True).click()
            expect(page.get_by_text("Abort the rollout?")).to_be_visible()
            page.get_by_label("Admin token", exact=True).fill(token)
            page.get_by_label("Admin token", exact=True).press("Enter")
            page.get_by_role("button", name="Yes, abort").click()
            expect(page.get_by_text("Rollout of v2 is aborted by an operator")).to_be_visible()
            expect(page.get_by_text("stable (v1) 100%; the candidate predictor removed")
                   ).to_be_visible()
            expect(row("stable")).to_contain_text("100%")
            expect(row("canary")).to_have_count(0)
            shot("4-aborted.png")

            # 5. try the model: hold-out rows answered by each predictor, downloadable
            page.get_by_role("button", name="Ask every predictor").click()
            expect(page.get_by_text("rows with different answers")).to_be_visible()
            expect(page.get_by_text("shadow (v4) shadow: asked its replica directly")
                   ).to_be_visible()
            with page.expect_download() as download:
                page.get_by_test_id("stDownloadButton").get_by_role("button").click()
            lines = Path(download.value.path()).read_text().splitlines()
            assert lines[0].startswith("row,mean radius,") and len(lines) == 11
            page.screenshot(path=SHOTS / "5-try-the-model.png", full_page=True)
        except Exception:
            page.screenshot(path=SHOTS / "failed.png", full_page=True)
            raise
        finally:
            browser.close()
    running = [(p["name"], p["version"], p["traffic"]) for p in at_baseline.status()["predictors"]]
    assert running == [(p["name"], p["version"], p["traffic"]) for p in BASELINE]
