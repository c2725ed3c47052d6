"""End to end: `attnlab serve` in a subprocess on 127.0.0.1, the page driven in headless Chromium.

Needs Debian's chromium (`apt-get install chromium`, done by .ci/install-extras) and the Python
`playwright` client; skips with the reason when either is missing, and fails under ATTNLAB_REQUIRE_EXTRAS=1 (CI).
ATTNLAB_CHROMIUM, when set, names the one browser to use (set it to a missing path to check that CI fails).
"""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from required import require, require_module

require_module("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
sync_api = require_module("playwright.sync_api", reason="the playwright client is not installed: pip install playwright")

from serve_support import FakeCaptioner, free_port, png_bytes  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    named = os.environ.get("ATTNLAB_CHROMIUM")
    candidates = [named] if named else [shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = find_chromium()
    if chromium is None:
        require("chromium", "chromium is not installed (apt-get install chromium, or set ATTNLAB_CHROMIUM)")
    pw = sync_api.sync_playwright().start()
    try:
        # a persistent context in a fresh directory is a fresh user-data-dir
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True,
            args=CHROMIUM_FLAGS, timeout=60_000)
    except Exception as err:  # noqa: BLE001 - a broken browser install is a skip (a failure in CI)
        pw.stop()
        require("chromium", f"chromium at {chromium} did not start: {str(err).splitlines()[0]}")
    context.set_default_timeout(30_000)
    yield context
    context.close()
    pw.stop()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    yield page
    page.close()


def cell_colours(page) -> list[str]:
    return page.eval_on_selector_all("#heatmap tbody td", "tds => tds.map(td => td.style.background)")


def test_translate_and_explore_the_heatmap(tiny_server, translator, page):
    page.goto(tiny_server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert "transformer" in page.text_content("#model-info")
    assert page.is_hidden("#caption-section")  # the tiny model is not a captioner

    sentence = "March 14, 2001"
    page.fill("#source", sentence)
    page.select_option("#beam", "2")
    page.click("#translate-button")
    page.wait_for_selector("#heatmap tbody td")

    expected = translator.translate([sentence], beam=2)[0]
    assert expected and page.text_content("#translation") == expected
    n_rows = page.locator("#heatmap tbody tr").count()
    n_cols = page.locator("#heatmap thead th").count() - 1  # minus the corner
    assert n_rows >= 2 and n_cols == len(translator.tokenizers.src.encode(sentence)) + 1
    assert page.locator("#heatmap tbody td").count() == n_rows * n_cols
    assert page.locator("#heatmap tr.active").count() == 0

    # hovering an output token highlights its row and shades the source tokens by its weights
    chips = "#source-strip .chip"
    assert all(not bg for bg in page.eval_on_selector_all(chips, "cs => cs.map(c => c.style.background)"))
    page.hover("#heatmap tbody tr:nth-child(2) th")
    assert page.get_attribute("#heatmap tr.active", "data-row") == "1"
    shaded = page.eval_on_selector_all(chips, "cs => cs.map(c => c.style.background)")
    assert len(shaded) == n_cols and all(shaded)
    assert "looks in the source" in page.text_content("#strip-label")
    page.hover("#heatmap tbody tr:nth-child(1) th")
    assert page.get_attribute("#heatmap tr.active", "data-row") == "0"
    assert page.eval_on_selector_all(chips, "cs => cs.map(c => c.style.background)") != shaded

    # keyboard users get the same by focusing a row header
    page.focus("#heatmap tbody tr:nth-child(2) th")
    assert page.get_attribute("#heatmap tr.active", "data-row") == "1"

    # layer and head selectors: 2 layers + mean, 4 heads + mean; each choice redraws the map
    assert page.locator("#layer option").count() == 3 and page.locator("#head option").count() == 5
    assert page.input_value("#layer") == "1" and page.input_value("#head") == "mean"
    before = cell_colours(page)
    page.select_option("#layer", "0")
    layer0 = cell_colours(page)
    page.select_option("#head", "2")
    head2 = cell_colours(page)
    assert before != layer0 != head2 and len(head2) == n_rows * n_cols
    assert page.errors == []


def test_a_refused_request_shows_the_message_and_the_page_goes_on(tiny_server, page):
    page.goto(tiny_server.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    # bypass the textarea's maxlength to send an over-long sentence
    page.eval_on_selector("#source", "el => { el.removeAttribute('maxlength'); el.value = 'a'.repeat(1500); }")
    page.click("#translate-button")
    page.wait_for_selector("#translate-status.error")
    assert "at most 1000 characters" in page.text_content("#translate-status")
    page.fill("#source", "July 4, 1976")
    page.click("#translate-button")
    page.wait_for_selector("#translation:has-text('1976')")  # not wait_for_function: the page's CSP forbids eval
    assert not page.locator("#translate-status.error").count()


@pytest.fixture(scope="module")
def caption_server():
    """A captioning app (with the fake captioner) under uvicorn on 127.0.0.1, in a thread."""
    import uvicorn

    from attnlab.serve import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(captioner=FakeCaptioner()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_caption_and_step_through_the_words(caption_server, page):
    page.goto(caption_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.is_hidden("#translate-section") and page.is_visible("#caption-section")

    # a file that is not an image: the server's message is shown
    page.set_input_files("#image", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.click("#caption-button")
    page.wait_for_selector("#caption-status.error")
    assert "not an image" in page.text_content("#caption-status")

    page.set_input_files("#image", files=[{"name": "dog.png", "mimeType": "image/png", "buffer": png_bytes(160, 120)}])
    page.click("#caption-button")
    page.wait_for_selector("#caption-result:not([hidden])")
    assert page.text_content("#caption") == "a dog runs on grass"
    assert page.locator("#caption-words button").count() == 5
    assert "word 1 of 5" in page.text_content("#word-label") and page.is_disabled("#prev-word")
    canvas = "c => c.toDataURL()"
    first = page.eval_on_selector("#caption-canvas", canvas)
    assert page.eval_on_selector("#caption-canvas", "c => [c.width, c.height]") == [160, 120]
    page.click("#next-word")
    assert "word 2 of 5" in page.text_content("#word-label")
    assert page.get_attribute("#caption-words button:nth-child(2)", "aria-pressed") == "true"
    second = page.eval_on_selector("#caption-canvas", canvas)
    assert second != first  # the attention overlay moved
    page.click("#caption-words button:nth-child(5)")
    assert "word 5 of 5" in page.text_content("#word-label") and page.is_disabled("#next-word")
    assert page.errors == [e for e in page.errors if "400" in e]  # only the refused upload's console note
