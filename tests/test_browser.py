"""The conversation browser in a real browser: Debian's Chromium driven by Playwright, against
``convostore serve``'s application run by uvicorn on a loopback port.

One flow, as a reader would go: sign in with a key, the sessions list, a conversation with
parallel tool calls (each call beside its output), a reasoning item (folded) and a compacted
part (summary marked, replaced messages behind a toggle); a search whose highlighted hit
leads to its message; deleting a session behind its confirmation. A message made of markup
must show as the characters it is, and no dialog may ever open.

Screenshots go to ``$CONVOSTORE_SCREENSHOTS`` if set, else to the test's temporary directory.
Skipped only when ``CONVOSTORE_NO_BROWSER`` is set or ``/usr/bin/chromium`` is missing
(``./dev test`` installs it when it can, and says so when it cannot).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import pytest
import uvicorn

from convostore import NewMessage, PostgresSessionStore
from convostore.keys import create_key
from convostore.server import create_app

from .test_server import AWKWARD_IDS

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Dialog, Page

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert(1)</script><b>bold</b><img src=x onerror=alert(2)>"
HOSTILE_TITLE = "<img src=y onerror=alert(3)> launch plan"


@dataclass
class Seeded:
    token: str
    weather: str  # parallel tool calls, reasoning, compaction
    hostile: str
    doomed: str  # deleted by the flow
    umbrella_seq: int


async def _seed(url: str, schema: str) -> Seeded:
    async with PostgresSessionStore(url, schema=schema) as store:
        token, _ = await create_key(store, name="browser test")
        weather = await store.create_session("alice", "travel-agent", {"title": "Weekend weather in Paris and Tokyo"})
        small_talk = await store.add_messages(
            weather.id,
            [
                NewMessage("user", "Hi! I am planning a weekend trip."),
                NewMessage("assistant", "Lovely. Where are you thinking of going?"),
                NewMessage("user", "Either Paris or Tokyo, I can't decide."),
            ],
        )
        await store.compact(
            weather.id,
            [NewMessage("assistant", "The user is planning a weekend trip and hesitates between Paris and Tokyo.")],
            from_seq=small_talk[0].seq,
        )
        calls = [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_tokyo",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
            },
        ]
        stored = await store.add_messages(
            weather.id,
            [
                NewMessage("user", "What will the weather be like in both cities this weekend?"),
                NewMessage(
                    "assistant",
                    "I should check both forecasts at once, then compare rain and temperature.",
                    raw={
                        "type": "reasoning",
                        "id": "rs_1",
                        "summary": [{"type": "summary_text", "text": "I should check both forecasts at once."}],
                    },
                ),
                NewMessage("assistant", "", tool_calls=calls),
                NewMessage("tool", '{"city": "Tokyo", "forecast": "sunny", "high_c": 21}', tool_call_id="call_tokyo"),
                NewMessage("tool", '{"city": "Paris", "forecast": "showers", "high_c": 14}', tool_call_id="call_paris"),
                NewMessage(
                    "assistant",
                    "Tokyo looks sunny with highs of 21°C. Paris expects showers and 14°C, so pack an umbrella.",
                ),
            ],
        )
        hostile = await store.create_session("alice", "red-team", {"title": HOSTILE_TITLE})
        await store.add_messages(
            hostile.id,
            [NewMessage("user", HOSTILE), NewMessage("assistant", "That was markup, shown as text.")],
        )
        doomed = await store.create_session("bob", "support", {"title": "Old ticket to delete"})
        await store.add_messages(doomed.id, [NewMessage("user", "Please close my ticket.")])
        return Seeded(token, weather.id, hostile.id, doomed.id, stored[-1].seq)


@pytest.fixture
def server(database_url: str, schema_name: str) -> Iterator[tuple[str, Seeded]]:
    """The application on a free loopback port, in a thread, against a seeded schema."""
    seeded = asyncio.run(_seed(database_url, schema_name))
    store = PostgresSessionStore(database_url, schema=schema_name, apply_migrations=False)
    app = create_app(store, owns_store=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", seeded
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def _shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("CONVOSTORE_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


@contextmanager
def _browser(tmp_path: Path) -> Iterator[tuple[Page, BrowserContext, Callable[[Page, str], None]]]:
    """A page of headless Chromium, and a function saving a screenshot of it; on leaving,
    no dialog may have opened and the page may have logged no error."""
    if os.environ.get("CONVOSTORE_NO_BROWSER"):
        pytest.skip("CONVOSTORE_NO_BROWSER is set: no browser test here")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); Playwright's own download cannot work here")
    from playwright.sync_api import sync_playwright

    shots = _shots(tmp_path)
    saved: list[Path] = []
    dialogs: list[str] = []
    errors: list[str] = []

    def shot(page: Page, name: str) -> None:
        path = shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        saved.append(path)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Europe/Paris")
            page = context.new_page()
            page.set_default_timeout(10_000)

            def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # Pages answered 401 or 404 on purpose log "Failed to load resource"; anything
            # else the console reports is an error, and every asset must load.
            page.on(
                "console",
                lambda msg: (
                    errors.append(msg.text)
                    if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                    else None
                ),
            )
            page.on(
                "response",
                lambda r: (
                    errors.append(f"{r.status} {r.url}")
                    if r.request.resource_type != "document" and r.status >= 400
                    else None
                ),
            )
            yield page, context, shot
        finally:
            browser.close()

    for path in saved:
        print(f"screenshot: {path}")
    assert dialogs == [], f"a dialog opened: {dialogs}"
    assert errors == [], f"the page logged errors: {errors}"


def _sign_in(page: Page, base: str, token: str) -> None:
    """Sign in on the sign-in page the browser was sent to."""
    from playwright.sync_api import expect

    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#key", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/ui/"))


def test_a_reader_browses_searches_and_deletes(server: tuple[str, Seeded], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    base, seeded = server
    with _browser(tmp_path) as (page, context, shot):
        # Signing in: the list asks for a key first.
        page.goto(f"{base}/ui/sessions")
        expect(page).to_have_url(re.compile(r"/ui/login\?next="))
        page.fill("#key", "csk_0123456789abcdef_" + "A" * 43)
        page.click("button[type=submit]")
        expect(page.locator(".flash-error")).to_contain_text("not valid")
        page.fill("#key", seeded.token)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base}/ui/sessions")
        cookie = next(c for c in context.cookies() if c["name"] == "convostore_session")
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"

        # The list: three sessions, the hostile title as text.
        rows = page.locator("table.sessions tbody tr")
        expect(rows).to_have_count(3)
        expect(page.get_by_role("link", name=HOSTILE_TITLE)).to_be_visible()
        assert page.locator("table.sessions img").count() == 0
        shot(page, "1-sessions")

        # A conversation: parallel calls beside their outputs, reasoning folded.
        page.get_by_role("link", name="Weekend weather in Paris and Tokyo").click()
        expect(page.locator("h1")).to_have_text("Weekend weather in Paris and Tokyo")
        calls = page.locator(".call")
        expect(calls).to_have_count(2)
        paris = calls.filter(has_text="call_paris")
        expect(paris.locator(".call-args")).to_contain_text('"city": "Paris"')
        expect(paris.locator(".call-output")).to_contain_text('"forecast": "showers"')
        tokyo = calls.filter(has_text="call_tokyo")
        expect(tokyo.locator(".call-output")).to_contain_text('"forecast": "sunny"')
        # The outputs are shown with their calls, not again on their own.
        expect(page.locator("li.msg.role-tool")).to_have_count(0)
        reasoning = page.locator("details.reasoning")
        expect(reasoning).to_have_count(1)
        assert reasoning.get_attribute("open") is None
        expect(reasoning.locator(".content")).not_to_be_visible()
        reasoning.locator("summary").click()
        expect(reasoning.locator(".content")).to_be_visible()
        reasoning.locator("summary").click()
        # The compacted part: the summary is marked, the replaced messages are hidden...
        expect(page.locator(".badge-summary")).to_contain_text("Summary of #1\u2013#3")
        expect(page.get_by_text("Either Paris or Tokyo")).to_have_count(0)
        # ... and times are in the reader's time zone, by the script.
        first_time = page.locator("li.msg time").first
        assert "UTC" not in (first_time.text_content() or "")
        shot(page, "2-conversation")
        # The raw toggle shows what the summary replaced.
        page.get_by_role("switch", name="Show replaced messages").click()
        expect(page.locator(".badge-replaced")).to_have_count(3)
        expect(page.get_by_text("Either Paris or Tokyo")).to_be_visible()

        # Hostile content is text: no element comes from it, no script runs.
        page.goto(f"{base}/ui/sessions/{seeded.hostile}")
        message = page.locator("li.msg.role-user .content")
        expect(message).to_have_text(HOSTILE)
        assert "<script>" in (message.text_content() or "")
        assert page.locator("li.msg script, li.msg b, li.msg img, h1 img").count() == 0
        expect(page.locator("h1")).to_have_text(HOSTILE_TITLE)
        assert "<img" in page.title()
        csp = page.request.get(f"{base}/ui/sessions").headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp

        # Search: the hit is highlighted and leads to its message.
        page.get_by_role("link", name="Search", exact=True).click()
        page.fill("input[name=q]", "umbrella")
        page.keyboard.press("Enter")
        hit = page.locator(".hit").first
        expect(hit.locator("mark")).to_have_text("umbrella")
        expect(hit).to_contain_text("pack an")
        shot(page, "3-search")
        hit.locator("a").click()
        expect(page).to_have_url(re.compile(rf"/ui/sessions/{seeded.weather}\?at=\d+#m-{seeded.umbrella_seq}$"))
        target = page.locator(f"#m-{seeded.umbrella_seq}")
        expect(target).to_be_in_viewport()
        expect(target).to_contain_text("pack an umbrella")
        assert page.evaluate("document.querySelector(':target').id") == f"m-{seeded.umbrella_seq}"
        # Above the summary, the earlier messages are those it replaced.
        expect(page.locator("li.msg").first).to_contain_text("weekend trip and hesitates")
        page.get_by_role("link", name="Earlier messages").click()
        expect(page.get_by_text("Either Paris or Tokyo, I can't decide.")).to_be_visible()
        expect(page.locator("li.msg")).to_have_count(3)
        expect(page.get_by_role("link", name="Later messages")).to_be_visible()

        # Deleting, behind a confirmation page.
        page.goto(f"{base}/ui/sessions/{seeded.doomed}")
        page.get_by_role("link", name="Delete…").click()
        expect(page.locator("h1")).to_contain_text("Delete “Old ticket to delete”?")
        shot(page, "4-delete-confirmation")
        page.get_by_role("button", name="Delete permanently").click()
        expect(page).to_have_url(f"{base}/ui/sessions?deleted=1")
        expect(page.locator(".flash-ok")).to_contain_text("deleted")
        expect(page.locator("table.sessions tbody tr")).to_have_count(2)
        expect(page.get_by_role("link", name="Old ticket to delete")).to_have_count(0)
        gone = page.goto(f"{base}/ui/sessions/{seeded.doomed}")
        assert gone is not None
        assert gone.status == 404

        # Signing out, behind its confirmation too.
        page.get_by_role("link", name="Sign out").click()
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/ui/login\?bye=1"))
        page.goto(f"{base}/ui/sessions")
        expect(page).to_have_url(re.compile(r"/ui/login"))


def test_the_root_opens_the_sessions_page(server: tuple[str, Seeded], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    base, seeded = server
    with _browser(tmp_path) as (page, _, _shot):
        page.goto(f"{base}/")
        _sign_in(page, base, seeded.token)
        expect(page).to_have_url(f"{base}/ui/sessions")
        expect(page.locator("h1")).to_have_text("Sessions")
        page.goto(f"{base}/")  # signed in: straight there
        expect(page).to_have_url(f"{base}/ui/sessions")
        expect(page.locator("table.sessions tbody tr")).to_have_count(3)


async def _seed_ids(url: str, schema: str) -> None:
    async with PostgresSessionStore(url, schema=schema) as store:
        for sid in AWKWARD_IDS:
            await store.create_session("carol", "a", session_id=sid)
            await store.add_messages(sid, [NewMessage("user", f"I am {sid}")])


async def _session_ids(url: str, schema: str) -> set[str]:
    async with PostgresSessionStore(url, schema=schema) as store:
        return {s.id for s in await store.list_sessions(user_id="carol", limit=100)}


def _stored_ids(url: str, schema: str) -> set[str]:
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _session_ids(url, schema)).result()


def test_every_id_opens_and_deletes_its_own_session(
    server: tuple[str, Seeded], tmp_path: Path, database_url: str, schema_name: str
) -> None:
    from playwright.sync_api import expect

    base, seeded = server
    asyncio.run(_seed_ids(database_url, schema_name))
    with _browser(tmp_path) as (page, _, shot):
        page.goto(f"{base}/ui/sessions?user=carol")
        _sign_in(page, base, seeded.token)
        # From the list (two pages of it), each link opens its own session, and each page's
        # links stay on it.
        links: dict[str, str] = {}
        script = "[...document.querySelectorAll('a.session-link')].map(a => [a.textContent, a.href])"
        links.update(page.evaluate(script))
        with page.expect_navigation():  # the next page, not the one the click leaves (a busy machine)
            page.get_by_role("link", name="Older →").click()
        links.update(page.evaluate(script))
        assert set(links) == set(AWKWARD_IDS)
        for sid in AWKWARD_IDS:
            page.goto(links[sid])
            expect(page.locator(".facts dd.mono")).to_have_text(sid)
            expect(page.locator("li.msg .content")).to_have_text(f"I am {sid}")
            export = page.get_by_role("link", name="Export JSON Lines").get_attribute("href")
            assert export == "/ui/export?" + urlencode({"session_id": sid})
            page.get_by_role("link", name="Delete…").click()
            expect(page.locator("h1")).to_have_text(f"Delete “{sid}”?")
            page.get_by_role("link", name="Cancel").click()
            expect(page.locator(".facts dd.mono")).to_have_text(sid)
        # Deleting "report/delete" deletes that session, and leaves "report".
        page.goto(f"{base}/ui/sessions/{quote('report/delete', safe='')}")
        page.get_by_role("link", name="Delete…").click()
        expect(page.locator("h1")).to_have_text("Delete “report/delete”?")
        shot(page, "delete-report-slash-delete")
        page.get_by_role("button", name="Delete permanently").click()
        expect(page).to_have_url(f"{base}/ui/sessions?deleted=1")
        assert _stored_ids(database_url, schema_name) == set(AWKWARD_IDS) - {"report/delete"}
        page.goto(f"{base}/ui/sessions/report")
        expect(page.locator(".facts dd.mono")).to_have_text("report")
        # And so for every other id: each deletion takes its own session only.
        remaining = set(AWKWARD_IDS) - {"report/delete"}
        for sid in AWKWARD_IDS:
            if sid not in remaining:
                continue
            page.goto(f"{base}/ui/sessions/{quote(sid, safe='')}/delete")
            expect(page.locator("h1")).to_have_text(f"Delete “{sid}”?")
            page.get_by_role("button", name="Delete permanently").click()
            expect(page).to_have_url(f"{base}/ui/sessions?deleted=1")
            remaining.discard(sid)
            assert _stored_ids(database_url, schema_name) == remaining, sid
