"""Real browser (Playwright + Debian's Chromium) against the real server and the UI in its own process.

Chat streams; admin actions are refused until an admin types the key in the page (the UI ignores the admin key
in its own environment); a named comparison is voted on, found in Data, exported and deleted; then the whole
preference loop: 30+ blind arena votes by a scripted annotator whose rule is "the shorter answer wins", DPO
trained on them from the Data tab (`train dpo --from-votes`, a subprocess reading the votes over HTTP), the new
adapter in Compare, and a second blind round where it beats the base with a leaderboard interval that excludes
50%. The UI runs with LORADOCK_DB_URL pointing at a file it must never create. Every tab is screenshotted
(LORADOCK_SCREENSHOTS=docs/img refreshes docs/ui.md's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loradock.core.procs import free_port, running
from tests.conftest import REPO
from tests.ui.loop_prompts import LOOP_RECIPE, ROUND1, ROUND2

pytestmark = [pytest.mark.browser, pytest.mark.engine]
FAQ_DOCS = REPO / "data" / "faq_docs"
# Screenshots go to a temp folder, so a test run leaves the checkout clean; set LORADOCK_SCREENSHOTS=docs/img
# to refresh the ones docs/ui.md shows.
SHOTS = Path(os.environ.get("LORADOCK_SCREENSHOTS") or tempfile.gettempdir() + "/loradock-ui-shots")
QUESTION = "How long is the Zephyr-9 warranty?"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARENA_SYSTEM = "Answer in one short sentence."
LOOP_ADAPTER = "loop-dpo"


@dataclass
class UI:
    url: str
    forbidden_db: Path


@pytest.fixture(scope="module")
def ui(server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """`loradock ui` against the server, started with the server's environment (admin key included: the UI
    must not use it) and a database URL whose file must never appear."""
    from loradock.rag.index import RagStore

    RagStore(server.rag_dir).index(FAQ_DOCS, "faq")
    work = tmp_path_factory.mktemp("ui")
    forbidden = work / "ui-opens-no-database" / "loradock.db"
    env = {**server.env, "LORADOCK_DB_URL": f"sqlite:///{forbidden}"}
    port = free_port()
    cmd = [sys.executable, "-m", "loradock", "ui", "--port", str(port), "--server", server.url,
           "--api-key", server.api_key]
    url = f"http://127.0.0.1:{port}"
    with running(cmd, url, work / "ui.log", env=env, timeout_s=120, cwd=REPO, health_path="/"):
        yield UI(url, forbidden)


@pytest.fixture(scope="module")
def page(request: pytest.FixtureRequest) -> Iterator[object]:
    chromium = shutil.which("chromium")
    if chromium is None:  # checked before the server and the UI are started
        pytest.skip("Debian's chromium is not installed: run `make browser` (apt-get install chromium)")
    ui: UI = request.getfixturevalue("ui")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(90_000)
        page.goto(ui.url)
        _wait_text(page, "#server-status", "adapters")
        # The model list reaches the dropdowns through a second event (models.change): wait for it too.
        page.wait_for_function("() => (document.querySelector('#chat-model input')?.value ?? '') !== ''")
        SHOTS.mkdir(parents=True, exist_ok=True)
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


def _pick(page, dropdown_id: str, *options: str, clear: bool = False) -> None:
    """Select ``options`` in a multiselect and check they stay selected: a model-list refresh that lands just
    after the clicks (it follows a publish through a second event) re-renders the dropdown with the selection it
    read before them, so the picks are made again until they hold."""
    chips = page.locator(f"#{dropdown_id} .token")
    for _ in range(5):
        if clear and page.locator(f"#{dropdown_id} .remove-all").count():
            page.locator(f"#{dropdown_id} .remove-all").click()
        for option in options:
            if option in [t.strip() for t in chips.all_inner_texts()]:
                continue
            page.locator(f"#{dropdown_id} input").click()
            page.get_by_role("option", name=option, exact=True).click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        shown = [t.strip() for t in chips.all_inner_texts()]
        if (sorted(shown) == sorted(options)) if clear else set(options) <= set(shown):
            return
    raise AssertionError(f"#{dropdown_id} would not keep {options}; it shows {chips.all_inner_texts()}")


def _unlock(page, key: str, expect: str) -> str:
    """Type the key and press Unlock; wait for ``expect`` (each wait is on text the status did not show before)."""
    page.locator("#admin-key-input input").fill(key)
    page.locator("#admin-unlock").click()
    return _wait_text(page, "#admin-status", expect)


def test_chat_streams_an_answer(page) -> None:
    _set_number(page, "chat-max-tokens", 24)
    page.locator("#chat-input textarea").fill("Say hello in five words.")
    page.locator("#chat-send").click()
    stats = _wait_text(page, "#chat-stats", r"tok/s|error")
    assert "error" not in stats and re.search(r"\d+ tokens", stats)
    assert page.locator("#chat-history").inner_text().count("Say hello in five words.") == 1
    page.screenshot(path=str(SHOTS / "ui-chat.png"), full_page=True)


def test_admin_actions_need_the_key_typed_in_the_page(page, server) -> None:
    page.get_by_role("tab", name="Adapters").click()
    _wait_text(page, "#adapters-table", r"syn-a")
    page.locator("#adapters-select input").click()
    page.get_by_role("option", name="syn-a", exact=True).click()

    # The UI runs with LORADOCK_ADMIN_KEY in its environment, and still refuses: no admin typed the key.
    page.locator("#adapters-unload").click()
    assert "admin action" in _wait_text(page, "#adapters-status", r"refused|removed")
    assert "syn-a" in [m["id"] for m in httpx.get(f"{server.v1}/models", headers=server.headers()).json()["data"]]
    assert "401" in _unlock(page, "not-the-key", "refused the key")  # the server checks what is typed

    _unlock(page, server.admin_key, "unlocked")
    page.locator("#adapters-unload").click()
    assert "'syn-a' removed" in _wait_text(page, "#adapters-status", r"removed")  # the last status said refused
    _wait_text(page, "#adapters-table", r"syn-a\s+\(store\)\s+not served", timeout_ms=20_000)
    page.locator("#adapters-load").click()
    assert "'syn-a' added" in _wait_text(page, "#adapters-status", r"added|refused")  # the last said removed
    _wait_text(page, "#adapters-table", r"syn-a\s+SmolLM2-135M-Instruct")
    page.screenshot(path=str(SHOTS / "ui-adapters.png"), full_page=True)


def test_named_compare_vote_export_and_delete(page, server) -> None:
    page.get_by_role("tab", name="Compare").click()
    page.get_by_text("Named (inspect)", exact=True).click()
    page.locator("#compare-prompt textarea").fill(QUESTION)
    _pick(page, "compare-adapters", "syn-a")
    _set_number(page, "compare-max-tokens", 40)
    page.locator("#compare-run").click()
    _wait_text(page, "#vote-status", r"Done|Need two")
    for column in range(3):  # Prompting, RAG (with its passages) and the adapter, each with latency and tokens
        assert page.locator(f"#compare-answer-{column}").inner_text().strip() not in ("", "(no answer)")
        assert re.search(r"\d+\.\d+ s .* \d+ tokens", page.locator(f"#compare-stats-{column}").inner_text())
    assert "warranty.md" in page.locator("#compare-passages").inner_text()
    page.screenshot(path=str(SHOTS / "ui-compare-named.png"), full_page=True)

    page.locator("#vote-b").click()  # side A is Prompting, side B the adapter
    record_id = re.search(r"fb-[0-9a-f]{24}", _wait_text(page, "#vote-status", r"Stored|Not stored")).group(0)
    page.locator("#vote-a").click()
    _wait_text(page, "#vote-status", "Already voted")  # no double counting

    page.get_by_role("tab", name="Data").click()
    table = _wait_text(page, "#data-table", record_id)
    assert "adapter: syn-a" in table and "prompting" in table
    record = httpx.get(f"{server.v1}/feedback", params={"limit": 1000}, headers=server.headers(admin=True)).json()
    record = next(r for r in record["data"] if r["id"] == record_id)
    assert record["verdict"] == "b" and record["chosen_model"] == "syn-a" and record["blind"] is False
    assert record["shown_order"] == ["Prompting", "Adapter: syn-a"]

    page.locator("#data-export").click()
    assert re.search(r"Exported [1-9]\d* of", _wait_text(page, "#data-status", "Exported|Not exported"))
    with page.expect_download() as download:
        page.get_by_test_id("download-link").first.click()
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert {"prompt": [{"role": "user", "content": QUESTION}], "chosen": [{"role": "assistant",
            "content": record["chosen"]}], "rejected": [{"role": "assistant", "content": record["rejected"]}]} in rows

    page.locator("#data-table span", has_text=record_id).first.click()
    page.wait_for_function("id => document.querySelector('#data-record-id textarea, #data-record-id input')"
                           "?.value === id", arg=record_id)
    page.locator("#data-delete").click()
    assert record_id in _wait_text(page, "#data-status", "Deleted|Not deleted")
    listed = httpx.get(f"{server.v1}/feedback", params={"limit": 1000}, headers=server.headers(admin=True)).json()
    assert record_id not in {r["id"] for r in listed["data"]}


def _words(text: str) -> int:
    return len(text.split())


def _arena_round(page, prompt: str) -> tuple[str, str, str]:
    """One blind round by the scripted annotator: the shorter answer wins. Returns (verdict, A, B labels)."""
    page.locator("#arena-input textarea").fill(prompt)
    page.locator("#arena-send").click()
    status = _wait_text(page, "#arena-status", r"answered|Not answered|needs at least")
    assert "Turn 1 answered" in status, status
    a = page.locator("#arena-chat-a [data-testid='bot']").last.inner_text()
    b = page.locator("#arena-chat-b [data-testid='bot']").last.inner_text()
    assert page.locator("#arena-reveal").inner_text().strip() == "", "identities stay hidden until the vote"
    verdict = "a" if _words(a) < _words(b) else "b" if _words(b) < _words(a) else "tie"
    page.locator(f"#arena-vote-{verdict}").click()
    assert "Stored" in _wait_text(page, "#arena-status", r"Stored|Not stored")
    revealed = page.locator("#arena-reveal").inner_text()
    who = re.search(r"A was (.+?)(?: \(version \d+\))? · .* B was (.+?)(?: \(version \d+\))? · ", revealed)
    assert who, revealed
    return verdict, who.group(1), who.group(2)


def _board(server, prompt_set: str) -> dict:
    r = httpx.get(f"{server.v1}/feedback/leaderboard", headers=server.headers(), timeout=180,
                  params={"level": "adapter", "blind": "true", "prompt_set": prompt_set})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.train
def test_blind_votes_train_an_adapter_that_then_wins(page, server, tmp_path: Path) -> None:
    # --- round 1: the base as is against the base told to be brief, sides drawn at random
    page.get_by_role("tab", name="Compare").click()
    page.get_by_text("Blind arena (vote)", exact=True).click()
    _pick(page, "arena-pool", "Base", "Prompting", clear=True)
    page.locator("#arena-system textarea").fill(ARENA_SYSTEM)
    _set_number(page, "arena-max-tokens", 64)  # room for the base to ramble and the brief ones to finish
    page.locator("#arena-annotator textarea").fill("scripted-shorter")
    page.locator("#arena-prompt-set textarea").fill("round-1")
    sides = [_arena_round(page, q) for q in ROUND1]
    assert len(sides) >= 30 and {s[1] for s in sides} == {"Base", "Prompting"}, "both sides get shown first"
    won = [(s[1] if s[0] == "a" else s[2]) for s in sides if s[0] != "tie"]
    assert won.count("Prompting") > won.count("Base")
    page.screenshot(path=str(SHOTS / "ui-compare.png"), full_page=True)

    # --- export and train from the Data tab: a subprocess that reads the votes over HTTP
    _unlock(page, server.admin_key, "unlocked")
    page.get_by_role("tab", name="Data").click()
    page.locator("#data-prompt-set textarea").fill("round-1")  # train on this round's votes only
    page.locator("#data-refresh").click()
    quality = _wait_text(page, "#data-quality", r"Data quality over [1-9]")
    assert "0 contradictory" in quality
    recipe = tmp_path / "loop.yaml"
    recipe.write_text(LOOP_RECIPE)
    page.locator("#train-name textarea").fill(LOOP_ADAPTER)
    page.locator("#train-recipe textarea").fill(str(recipe))
    page.locator("#train-start").click()
    status = _wait_text(page, "#train-status", r"published|failed", timeout_ms=900_000)
    assert "published" in status, status
    assert re.search(r"[2-9]\d pairs exported", status), status
    page.locator("#train-loss").scroll_into_view_if_needed()  # plots draw only once scrolled into view
    page.wait_for_timeout(1500)  # let it draw before the screenshot (nothing is asserted on it)
    page.screenshot(path=str(SHOTS / "ui-data.png"), full_page=True)

    # --- round 2, on prompts it never trained on: the new adapter against the base, same rule
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "arena-pool", "Base", f"Adapter: {LOOP_ADAPTER}", clear=True)
    page.locator("#arena-prompt-set textarea").fill("round-2")
    sides = [_arena_round(page, q) for q in ROUND2]
    adapter = f"Adapter: {LOOP_ADAPTER}"
    wins = sum((s[1] if s[0] == "a" else s[2]) == adapter for s in sides if s[0] != "tie")

    board = _board(server, "round-2")  # the interval of the adapter's win rate over the base excludes 50%
    pair = next(p for p in board["pairs"] if {p["a"], p["b"]} == {"base", LOOP_ADAPTER})
    adapter_low = 1 - pair["upper"] if pair["a"] == "base" else pair["lower"]
    assert pair["votes"] == len(ROUND2) and adapter_low > 0.5, (wins, pair, sides)
    ratings = {r["name"]: r for r in board["ratings"]}
    assert ratings[LOOP_ADAPTER]["rating"] > ratings["base"]["rating"]
    (SHOTS / "loop-leaderboard.json").write_text(json.dumps(_board(server, "") | {"round_2": board}, indent=1))
    page.get_by_role("tab", name="Leaderboard").click()
    page.locator("#board-refresh").click()
    _wait_text(page, "#board-ratings", LOOP_ADAPTER, timeout_ms=180_000)
    page.screenshot(path=str(SHOTS / "ui-leaderboard.png"), full_page=True)


def test_the_ui_opened_no_database(ui: UI) -> None:
    assert not ui.forbidden_db.parent.exists(), "the UI (or its training job) opened the database itself"
