"""Real browser (Playwright + Debian's Chromium) against the real server and the UI in its own process.

Runs a prompt in Compare (Prompting, RAG with a cited passage, an adapter), votes, finds the pair in the Data
tab and in the database, and screenshots every tab (LORADOCK_SCREENSHOTS=docs/img refreshes docs/ui.md's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loradock.core.feedback import FeedbackStore
from loradock.core.procs import free_port, running
from tests.conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.engine]
FAQ_DOCS = REPO / "data" / "faq_docs"
# Screenshots go to a temp folder, so a test run leaves the checkout clean; set LORADOCK_SCREENSHOTS=docs/img
# to refresh the ones docs/ui.md shows.
SHOTS = Path(os.environ.get("LORADOCK_SCREENSHOTS") or tempfile.gettempdir() + "/loradock-ui-shots")
QUESTION = "How long is the Zephyr-9 warranty?"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def ui_url(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The faq collection indexed where the server reads it, and `loradock ui` running against the server."""
    from loradock.rag.index import RagStore

    RagStore(server.rag_dir).index(FAQ_DOCS, "faq")
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    cmd = [sys.executable, "-m", "loradock", "ui", "--port", str(port), "--server", server.url,
           "--api-key", server.api_key, "--admin-key", server.admin_key, "--db-url", server.db_url,
           "--adapters-dir", str(server.adapters_dir)]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, url, log, env=server.env, timeout_s=120, cwd=REPO, health_path="/"):
        yield url


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest) -> Iterator[object]:
    chromium = shutil.which("chromium")
    if chromium is None:  # checked before the server and the UI are started
        pytest.skip("Debian's chromium is not installed: run `make browser` (apt-get install chromium)")
    ui_url = request.getfixturevalue("ui_url")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(ui_url)
        _wait_text(page, "#server-status", "adapters")
        yield page
        browser.close()


def _wait_text(page, selector: str, pattern: str, timeout_ms: float = 90_000) -> str:
    """Wait until the element's text matches ``pattern``; return the text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([sel, pat]) => new RegExp(pat).test(document.querySelector(sel)?.innerText ?? '')",
            arg=[selector, pattern], timeout=timeout_ms)
    except PlaywrightTimeout:
        raise AssertionError(f"{selector} never matched {pattern!r}; it shows:\n"
                             f"{page.locator(selector).inner_text()}") from None
    return page.locator(selector).inner_text()


def _set_number(page, slider_id: str, value: int) -> None:
    box = page.locator(f"#{slider_id} input[type='number']")
    box.fill(str(value))
    box.press("Enter")


def test_chat_streams_an_answer(page) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    _set_number(page, "chat-max-tokens", 24)
    page.locator("#chat-input textarea").fill("Say hello in five words.")
    page.locator("#chat-send").click()
    stats = _wait_text(page, "#chat-stats", r"tok/s|error")
    assert "error" not in stats and re.search(r"\d+ tokens", stats)
    assert page.locator("#chat-history").inner_text().count("Say hello in five words.") == 1
    page.screenshot(path=str(SHOTS / "ui-chat.png"), full_page=True)


def test_compare_vote_and_see_the_pair_in_data(page, server) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt textarea").fill(QUESTION)
    page.locator("#compare-adapters input").click()
    page.get_by_role("option", name="syn-a", exact=True).click()
    page.keyboard.press("Escape")
    _set_number(page, "compare-max-tokens", 40)
    page.locator("#compare-run").click()
    _wait_text(page, "#vote-status", r"Done|Need two")

    # Prompting, RAG and the adapter all answered, each with latency and tokens; RAG shows its passages.
    for column in range(3):
        answer = page.locator(f"#compare-answer-{column}").inner_text().strip()
        stats = page.locator(f"#compare-stats-{column}").inner_text()
        assert answer and answer != "(no answer)", f"column {column} is empty"
        assert re.search(r"\d+\.\d+ s .* \d+ tokens", stats), stats
    passages = page.locator("#compare-passages").inner_text()
    assert "Cited passages" in passages and "warranty.md" in passages
    page.screenshot(path=str(SHOTS / "ui-compare.png"), full_page=True)

    # Side A is Prompting, side B the adapter (the defaults after a run); vote "B better".
    page.locator("#vote-b").click()
    status = _wait_text(page, "#vote-status", r"Stored|Not stored")
    record_id = re.search(r"fb-[0-9a-f]{24}", status).group(0)

    page.get_by_role("tab", name="Data").click()
    table = _wait_text(page, "#data-table", record_id)
    assert "adapter: syn-a" in table and "prompting" in table
    assert re.search(r"[1-9]\d* exportable pairs", page.locator("#data-summary").inner_text())
    page.locator("#data-export").click()
    assert re.search(r"Exported [1-9]\d* pairs", _wait_text(page, "#data-status", "Exported"))
    with page.expect_download() as download:
        page.get_by_test_id("download-link").first.click()
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert set(rows[-1]) == {"prompt", "chosen", "rejected"}
    assert rows[-1]["prompt"] == [{"role": "user", "content": QUESTION}]
    assert rows[-1]["chosen"][0]["role"] == "assistant"
    page.screenshot(path=str(SHOTS / "ui-data.png"), full_page=True)

    with FeedbackStore(server.db_url) as store:
        record = store.get(record_id)
    assert record.verdict == "b" and record.chosen_model == "syn-a" and record.chosen_approach == "adapter"
    assert record.rejected_approach == "prompting"
    assert record.prompt == [{"role": "user", "content": QUESTION}]

    # Voting on the same pair again is refused (no double counting).
    page.get_by_role("tab", name="Compare").click()
    page.locator("#vote-a").click()
    _wait_text(page, "#vote-status", "Already voted")

    # Select the row in Data and delete the record.
    page.get_by_role("tab", name="Data").click()
    page.locator("#data-table span", has_text=record_id).first.click()
    page.wait_for_function("id => document.querySelector('#data-record-id textarea, #data-record-id input')"
                           "?.value === id", arg=record_id)
    page.get_by_role("button", name="Delete record").click()
    assert record_id in _wait_text(page, "#data-status", "Deleted")
    with FeedbackStore(server.db_url) as store:
        assert store.get(record_id) is None


def test_adapters_tab_shows_the_store_and_admins_unload_and_load(page, server) -> None:
    page.get_by_role("tab", name="Adapters").click()
    # Opening the tab refreshes /v1/models: syn-a answered in Compare, so it is resident now.
    table = _wait_text(page, "#adapters-table", r"syn-a\s+SmolLM2-135M-Instruct\s+yes")
    assert "(base)" in table and "syn-b" in table
    page.screenshot(path=str(SHOTS / "ui-adapters.png"), full_page=True)

    # The UI was started with the admin key.
    page.locator("#adapters-select input").click()
    page.get_by_role("option", name="syn-a", exact=True).click()
    page.locator("#adapters-unload").click()
    assert "'syn-a' removed" in _wait_text(page, "#adapters-status", r"removed|failed")
    # An unloaded adapter is no longer served; the table still lists it from the store folder.
    _wait_text(page, "#adapters-table", r"syn-a\s+\(store\)\s+not served", timeout_ms=20_000)
    page.locator("#adapters-load").click()
    assert "'syn-a' added" in _wait_text(page, "#adapters-status", r"added|failed")
    _wait_text(page, "#adapters-table", r"syn-a\s+SmolLM2-135M-Instruct\s+yes")
