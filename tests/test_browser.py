"""The web interface in a real browser: Debian's chromium driven by Playwright against a real
`rag serve` with the embedded model. Set RAG_SCREENSHOT=path to keep a screenshot of the
answered question (the README's picture is made this way)."""

import os
import time
from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_KEY, READ_KEY
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
QUESTION = "How many commune-level military party cells were established?"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install chromium (.ci/run does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


def new_page(browser):
    """A page in a context of its own (no cookies shared), noting what the Content-Security-Policy
    blocked, for the test that the interface needs nothing more."""
    page = browser.new_page(viewport={"width": 1400, "height": 950})
    page.set_default_timeout(30_000)
    page.csp_violations = []
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and page.csp_violations.append(message.text),
    )
    return page


@pytest.fixture(scope="module")
def page(browser, live_server):
    page = new_page(browser)
    page.goto(live_server.url + "/", wait_until="load")
    page.wait_for_selector("#question textarea")
    return page


def test_ask_shows_a_cited_answer_with_its_confidence_and_a_citation_opens_its_highlighted_span(page) -> None:
    page.locator("#question textarea").fill(QUESTION)
    page.locator("#ask-button").click()
    answer = page.locator('#chat [data-testid="bot"]').last
    # The embedded model chooses among numbered evidence sentences: the chosen sentences arrive
    # in one piece, then the verified answer (with citation links) replaces them.
    deadline = time.monotonic() + 300
    while page.locator("#chat a.cite").count() == 0:
        assert time.monotonic() < deadline, "no cited answer within 300 s"
        time.sleep(0.1)
    assert "529" in answer.inner_text()
    assert "Confidence" in answer.inner_text()

    marker = page.locator("#chat a.cite").first
    card_id = marker.get_attribute("href").split("#")[1]
    marker.click()
    card = page.locator(f"#{card_id}")
    page.wait_for_function(f"document.getElementById('{card_id}').classList.contains('active')")
    assert card.is_visible()
    assert "529 commune-level military party cells" in card.locator("mark").inner_text()
    assert "Supported" in card.locator(".verdict").inner_text()
    if os.environ.get("RAG_SCREENSHOT"):
        page.screenshot(path=os.environ["RAG_SCREENSHOT"])

    with page.context.expect_page() as opened:
        card.get_by_text("Open document").click()
    document = opened.value
    document.wait_for_load_state()
    assert "529 commune-level military party cells" in document.locator("mark#span").inner_text()
    document.close()


def test_a_question_the_documents_cannot_answer_shows_not_found(page) -> None:
    page.locator("#settings").click()
    page.locator("#model input").fill("extractive")
    page.keyboard.press("Enter")
    page.locator("#question textarea").fill("What is the boiling point of liquid nitrogen on Mars?")
    page.locator("#ask-button").click()
    page.wait_for_selector("#sources .abstained")
    assert "Not found in the documents" in page.locator('#chat [data-testid="bot"]').last.inner_text()


def test_upload_a_document_then_find_it_by_search(page, live_server, tmp_path) -> None:
    note = tmp_path / "orchard-report.md"
    note.write_text(
        "# Orchard report\n\nThe Kestrel Valley orchard harvested 4,210 crates of quince in the 2026 season.\n"
    )
    page.get_by_role("tab", name="Documents").click()
    page.locator("#upload input[type=file]").set_input_files(str(note))
    page.locator("#add-button").click()
    page.wait_for_selector("#documents-status :text('orchard-report.md')")
    assert "added" in page.locator("#documents-status").inner_text()
    assert page.locator("#documents-table").get_by_text("orchard-report.md").count() >= 1
    assert (live_server.corpus / "orchard-report.md").exists()

    page.get_by_role("tab", name="Search").click()
    page.locator("#search-query textarea").fill("How many crates of quince did the orchard harvest?")
    page.locator("#search-button").click()
    first = page.locator("#search-results .source-card").first
    first.wait_for()
    assert "orchard-report.md" in first.inner_text() and "4,210 crates" in first.inner_text()

    page.get_by_role("tab", name="Documents").click()
    page.locator("#remove-choice input").fill("orchard-report.md")
    page.get_by_role("option", name="orchard-report.md").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#remove-button").click()
    page.wait_for_selector("#documents-status :text('Removed')")
    assert page.locator("#documents-table").get_by_text("orchard-report.md").count() == 0
    assert not (live_server.corpus / "orchard-report.md").exists()


def test_narrow_screen_puts_sources_below_the_answer(page) -> None:
    page.get_by_role("tab", name="Ask").click()
    page.set_viewport_size({"width": 420, "height": 900})
    try:
        chat, sources = page.locator("#chat").bounding_box(), page.locator("#sources").bounding_box()
        assert sources["y"] > chat["y"] + chat["height"] and sources["width"] > 300
    finally:
        page.set_viewport_size({"width": 1400, "height": 950})


def use_extractive_model(page) -> None:
    if not page.locator("#model input").is_visible():
        page.locator("#settings").click()
    page.locator("#model input").fill("extractive")
    page.keyboard.press("Enter")


def test_html_planted_in_a_document_shows_as_text_in_the_answer(page, live_server) -> None:
    planted = "The Quarnby bell foundry cast <img src=x onerror=alert(1)> 312 bronze bells in 1911.\n"
    added = httpx.post(
        f"{live_server.url}/documents", files={"file": ("quarnby.txt", planted.encode(), "text/plain")}, timeout=120
    )
    assert added.status_code == 201, added.text
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    try:
        page.get_by_role("tab", name="Ask").click()
        use_extractive_model(page)
        page.locator("#question textarea").fill("How many bronze bells did the Quarnby bell foundry cast?")
        page.locator("#ask-button").click()
        answer = page.locator('#chat [data-testid="bot"]').last
        expect(answer).to_contain_text("312 bronze bells", timeout=120_000)
        expect(answer.locator("a.cite").first).to_be_visible()
        assert "<img src=x onerror=alert(1)>" in answer.inner_text()
        assert answer.locator("img").count() == 0 and page.locator("#sources img").count() == 0
        assert alerts == []
    finally:
        httpx.delete(f"{live_server.url}/documents/quarnby.txt", timeout=120)


def test_a_pdf_citation_opens_its_rendered_page_with_the_span_outlined(page, live_server, tmp_path) -> None:
    from doc_fixtures import report_pdf

    pdf = report_pdf(tmp_path / "field-notes.pdf")
    added = httpx.post(
        f"{live_server.url}/documents", files={"file": (pdf.name, pdf.read_bytes(), "application/pdf")}, timeout=300
    )
    assert added.status_code == 201, added.text
    try:
        page.get_by_role("tab", name="Ask").click()
        use_extractive_model(page)
        page.locator("#question textarea").fill("How fast does the Merlin Glacier retreat each year?")
        page.locator("#ask-button").click()
        answer = page.locator('#chat [data-testid="bot"]').last
        expect(answer).to_contain_text("twenty-five metres a year", timeout=120_000)
        marker = answer.locator("a.cite").first
        card_id = marker.get_attribute("href").split("#")[1]
        marker.click()
        card = page.locator(f"#{card_id}")
        expect(card).to_contain_text("field-notes.pdf · p. 3")

        images = []
        page.context.on("response", lambda response: "/page-image/" in response.url and images.append(response))
        with page.context.expect_page() as opened:
            card.get_by_text("Open p. 3").click()
        document = opened.value
        document.wait_for_load_state("load")
        figure = document.locator("figure#span")
        expect(figure.locator("figcaption")).to_have_text("p. 3")
        boxes = figure.locator("rect.span-box")
        assert boxes.count() >= 1
        picture = figure.locator("svg").bounding_box()
        first = boxes.first.bounding_box()
        # On the page, under its running header: the top quarter of the rendered sheet.
        assert picture["x"] <= first["x"] and first["x"] + first["width"] <= picture["x"] + picture["width"]
        assert picture["y"] < first["y"] < picture["y"] + picture["height"] / 4 and first["height"] > 3
        assert [r.status for r in images] == [200] and images[0].header_value("content-type") == "image/png"
        assert "twenty-five metres a year" in document.locator("mark").inner_text()
        document.close()
    finally:
        httpx.delete(f"{live_server.url}/documents/field-notes.pdf", timeout=120)


def test_the_interface_works_within_its_content_security_policy(page) -> None:
    assert page.csp_violations == []


def log_in(browser, server, key: str):
    page = new_page(browser)
    page.goto(server.url + "/", wait_until="load")
    assert page.url == server.url + "/login"
    page.locator("#key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#question textarea")
    return page


def test_with_keys_the_interface_needs_a_login_and_only_an_admin_adds_documents(
    browser, keyed_server, tmp_path
) -> None:
    page = new_page(browser)
    page.goto(keyed_server.url + "/", wait_until="load")
    page.locator("#key").fill("not-a-key-0000000000000000")
    page.get_by_role("button", name="Log in").click()
    assert "That key is not valid." in page.inner_text("body")

    note = tmp_path / "kestrel.md"
    note.write_text("# Kestrel\n\nThe Kestrel Valley orchard harvested 4,210 crates of quince in 2026.\n")
    reader = log_in(browser, keyed_server, READ_KEY)
    reader.get_by_role("tab", name="Search").click()
    reader.locator("#search-query textarea").fill("military party cells")
    reader.locator("#search-button").click()
    reader.locator("#search-results .source-card").first.wait_for()
    reader.get_by_role("tab", name="Documents").click()
    reader.locator("#upload input[type=file]").set_input_files(str(note))
    reader.locator("#add-button").click()
    reader.wait_for_selector("#documents-status :text('needs an admin key')")
    assert not (keyed_server.corpus / "kestrel.md").exists()
    assert reader.csp_violations == []

    admin = log_in(browser, keyed_server, ADMIN_KEY)
    admin.get_by_role("tab", name="Documents").click()
    admin.locator("#upload input[type=file]").set_input_files(str(note))
    admin.locator("#add-button").click()
    admin.wait_for_selector("#documents-status :text('kestrel.md')")
    assert "added" in admin.locator("#documents-status").inner_text()
    assert (keyed_server.corpus / "kestrel.md").exists()

    admin.get_by_role("link", name="Log out").click()
    admin.wait_for_url(keyed_server.url + "/login")
    admin.goto(keyed_server.url + "/", wait_until="load")
    assert admin.url == keyed_server.url + "/login"  # the cookie is gone
