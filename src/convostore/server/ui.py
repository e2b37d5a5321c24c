"""The conversation browser under ``/ui``: server-rendered pages, no front-end build.

Pages are Jinja2 templates with autoescaping on; stored text is only ever passed to them as
text (nothing is marked safe), and the Content-Security-Policy allows no inline script or
style, so a message holding markup shows as the characters it is.

Signing in checks the pasted API key and keeps a sign-in token (never the key) in an
``HttpOnly``, ``SameSite=Strict`` cookie, ``Secure`` unless the host is a loopback one (so a
server behind a TLS proxy elsewhere, which sees plain http, still marks it): signed by the
server, it names the key and expires after 8 hours (or with the key), and signing out ends
every sign-in of the key (see :mod:`.auth`). State-changing actions (deleting a session,
signing out) are POST forms behind a confirmation page, carrying a CSRF token derived from
the sign-in token (an HMAC under the server's secret), so that no other site can make a
signed-in browser submit them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.responses import StreamingResponse
from starlette.staticfiles import StaticFiles

from ..errors import ConvostoreError
from ..keys import ApiKey, sign_out
from ..models import Message
from ..store import PostgresSessionStore
from .api import jsonl_export
from .auth import Authenticator, SignIns, view_for
from .conversation import entries, title_of, utc_text
from .paging import decode_cursor, encode_cursor
from .problems import ApiProblem, session_not_found
from .schemas import snippet_parts

HERE = Path(__file__).parent
COOKIE = "convostore_session"
LOGIN_COOKIE = "convostore_login"
SIGN_IN_LIFETIME = 8 * 3600.0  # seconds a sign-in lasts
SESSIONS_PAGE = 25
MESSAGES_PAGE = 200
HITS_PAGE = 20
CONTEXT_BEFORE_HIT = 8  # messages shown above a search hit followed to its conversation

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every template, whatever its name: stored text is never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fingerprint(name: str) -> str:
    return hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest()[:10]


# Static URLs carry a fingerprint of the file, so a new release is never served stale.
_STATIC = {name: f"/ui/static/{name}?v={_fingerprint(name)}" for name in ("app.css", "app.js", "favicon.svg")}
_env.globals["static"] = _STATIC
_env.filters["when"] = utc_text
_env.filters["iso"] = lambda value: "" if value is None else value.isoformat()
_env.filters["path"] = lambda value: quote(value, safe="")  # one path segment, "/" included


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in reader: the key, the view of the store it acts in, its CSRF token."""

    key: ApiKey
    view: PostgresSessionStore
    csrf: str


class _Redirect(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _safe_next(target: str | None) -> str:
    # Only a path of the browser itself: never another site (open redirects).
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/sessions"


async def _find_viewer(request: Request) -> Viewer | None:
    token = request.cookies.get(COOKIE)
    sign_ins: SignIns = request.app.state.sign_ins
    signed = sign_ins.read(token)  # no round trip for a token the server did not sign
    if token is None or signed is None:
        return None
    auth: Authenticator = request.app.state.auth
    key = await auth.key_by_id(signed.key_id)
    if key is None or key.sign_outs != signed.sign_outs:  # revoked, expired, or signed out
        return None
    return Viewer(key, view_for(auth.store, key, None), sign_ins.csrf(token))


async def signed_in(request: Request) -> Viewer:
    """The reader of a page that needs signing in (else off to the sign-in page)."""
    viewer = await _find_viewer(request)
    if viewer is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise _Redirect("/ui/login?" + urlencode({"next": target}))
    return viewer


SignedIn = Annotated[Viewer, Depends(signed_in)]


def render(name: str, *, status: int = 200, viewer: Viewer | None = None, **context: Any) -> HTMLResponse:
    """Template *name* rendered with *context* (autoescaped)."""
    html = _env.get_template(name).render(viewer=viewer, **context)
    return HTMLResponse(html, status_code=status)


async def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    """An error of a browser page, as a page (with the reader's header when signed in)."""
    try:
        viewer = await _find_viewer(request)
    except ConvostoreError:  # the database may be what failed
        viewer = None
    return render("error.html", status=status, viewer=viewer, code=status, title=title, detail=detail)


def _check_csrf(viewer: Viewer, form: Mapping[str, Any]) -> None:
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, viewer.csrf):
        raise ApiProblem(403, "forbidden", "Forbidden", "this form has expired; reload the page and try again")


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value.strip() or None if value is not None else None


def _id_param(request: Request, name: str) -> str | None:
    # An id exactly as given: " a " and "a" are two sessions (or branches).
    return request.query_params.get(name) or None


def _seq_param(request: Request, name: str) -> int | None:
    value = _param(request, name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise ApiProblem(400, "invalid-input", "Invalid input", f"{name} must be a message number")
    return int(value)


router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("")
async def home() -> RedirectResponse:
    """The browser starts at the sessions list."""
    return RedirectResponse("/ui/sessions", status_code=303)


# -- signing in and out ------------------------------------------------------------------------


def _login_page(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        "login.html",
        status=status,
        nonce=nonce,
        error=error,
        next=_safe_next(request.query_params.get("next")),
        signed_out="bye" in request.query_params,
    )
    # Double-submit token of the sign-in form: another site cannot sign a browser in with
    # its own key (login CSRF).
    _set_cookie(request, response, LOGIN_COOKIE, nonce, max_age=3600)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=not _loopback(request.url.hostname),
    )


def _loopback(host: str | None) -> bool:
    """Whether *host* names this machine: the only place a cookie may go without TLS."""
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@router.get("/login")
async def login_form(request: Request) -> Response:
    """The sign-in page: paste an API key."""
    if await _find_viewer(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the pasted key, and keep it in the session cookie."""
    form = await request.form(max_files=0, max_fields=10)
    nonce, cookie = form.get("nonce"), request.cookies.get(LOGIN_COOKIE)
    if not isinstance(nonce, str) or not cookie or not hmac.compare_digest(nonce, cookie):
        return _login_page(request, error="The sign-in form expired. Please try again.", status=400)
    token = form.get("key")
    token = token.strip() if isinstance(token, str) else ""
    auth: Authenticator = request.app.state.auth
    try:
        key = await auth.key(token, fresh=True)
    except ApiProblem:
        return _login_page(
            request, error="That key is not valid: it is unknown, mistyped, revoked or expired.", status=401
        )
    next_url = form.get("next")
    response = RedirectResponse(_safe_next(next_url if isinstance(next_url, str) else None), status_code=303)
    sign_ins: SignIns = request.app.state.sign_ins
    _set_cookie(request, response, COOKIE, sign_ins.issue(key), max_age=int(sign_ins.lifetime))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.get("/logout")
async def logout_confirm(viewer: SignedIn) -> Response:
    """Ask before signing out."""
    return render(
        "confirm.html",
        viewer=viewer,
        title="Sign out?",
        heading="Sign out of convostore?",
        lines=["Every browser signed in with this key is signed out; paste the key again to come back."],
        action="/ui/logout",
        button="Sign out",
        danger=False,
        cancel="/ui/sessions",
    )


@router.post("/logout")
async def logout(request: Request, viewer: SignedIn) -> Response:
    """End the key's sign-ins (this browser's and any other's), and forget the token."""
    _check_csrf(viewer, await request.form(max_files=0, max_fields=5))
    auth: Authenticator = request.app.state.auth
    await sign_out(auth.store, viewer.key.id)  # None: the key is gone, and its sign-ins with it
    auth.forget(viewer.key.id)
    response = RedirectResponse("/ui/login?bye=1", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


# -- sessions ---------------------------------------------------------------------------------


def _since(day: str | None, zone: str | None) -> datetime | None:
    """The start of *day* (``YYYY-MM-DD``) in the reader's time zone *zone* (else UTC)."""
    if day is None:
        return None
    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        raise ApiProblem(400, "invalid-input", "Invalid input", "updated since must be a date") from None
    try:
        tz: Any = ZoneInfo(zone) if zone and re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", zone) else UTC
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    return datetime.combine(parsed, time.min, tz).astimezone(UTC)


@router.get("/sessions")
async def sessions(request: Request, viewer: SignedIn) -> Response:
    """Sessions, most recently updated first, filtered by user, agent and update time."""
    user, agent = _param(request, "user"), _param(request, "agent")
    day, zone, before = _param(request, "since"), _param(request, "tz"), _param(request, "before")
    found = await viewer.view.list_sessions(
        user_id=user,
        agent_name=agent,
        updated_since=_since(day, zone),
        limit=SESSIONS_PAGE + 1,
        before=None if before is None else decode_cursor(before),
    )
    page = found[:SESSIONS_PAGE]
    older = None
    if len(found) > SESSIONS_PAGE:
        kept = {k: v for k, v in (("user", user), ("agent", agent), ("since", day), ("tz", zone)) if v}
        older = "/ui/sessions?" + urlencode({**kept, "before": encode_cursor(page[-1].cursor)})
    export = "/ui/export?" + urlencode({"user_id": user}) if user else None
    return render(
        "sessions.html",
        viewer=viewer,
        sessions=[(s, title_of(s.metadata, s.id)) for s in page],
        filters={"user": user or "", "agent": agent or "", "since": day or ""},
        filtered=bool(user or agent or day),
        paged=before is not None,
        older=older,
        export=export,
        deleted="deleted" in request.query_params,
    )


async def _read_page(
    view: PostgresSessionStore, sid: str, *, branch: str, raw: bool, before: int | None, after: int | None
) -> tuple[list[Message], bool]:
    """A page of a conversation and whether there is more in the paging direction."""
    found = await view.get_messages(
        sid, limit=MESSAGES_PAGE + 1, before_seq=before, after_seq=after, branch=branch, raw=raw
    )
    more = len(found) > MESSAGES_PAGE
    if not more:
        return found, False
    return (found[:MESSAGES_PAGE] if after is not None else found[-MESSAGES_PAGE:]), True


@router.get("/sessions/{session_id:text}/delete")
async def delete_confirm(session_id: str, viewer: SignedIn) -> Response:
    """Ask before deleting a session."""
    session = await viewer.view.get_session(session_id)
    if session is None:
        raise session_not_found(session_id)
    title = title_of(session.metadata, session.id)
    return render(
        "confirm.html",
        viewer=viewer,
        title="Delete session?",
        heading=f"Delete “{title}”?",
        lines=[
            f"The conversation of user {session.user_id} with agent {session.agent_name} "
            f"({_count(session.message_count, 'message')}) will be deleted for good, with all its branches.",
            "This cannot be undone. Export the session first if you may need it.",
        ],
        action=_session_url(session.id, "delete"),
        button="Delete permanently",
        danger=True,
        cancel=_session_url(session.id),
    )


@router.post("/sessions/{session_id:text}/delete")
async def delete(request: Request, session_id: str, viewer: SignedIn) -> Response:
    """Delete a session (after the confirmation page)."""
    _check_csrf(viewer, await request.form(max_files=0, max_fields=5))
    if not await viewer.view.delete_session(session_id):
        raise session_not_found(session_id)
    return RedirectResponse("/ui/sessions?deleted=1", status_code=303)


@router.get("/sessions/{session_id:text}")
async def conversation(request: Request, session_id: str, viewer: SignedIn) -> Response:
    """One conversation: its messages, tool calls beside their outputs, summaries marked."""
    view = viewer.view
    session = await view.get_session(session_id)
    if session is None:
        raise session_not_found(session_id)
    branch = _id_param(request, "branch") or "main"
    raw = _param(request, "raw") == "1"
    before, after, at = _seq_param(request, "before"), _seq_param(request, "after"), _seq_param(request, "at")
    if at is not None:  # a search hit: start a little before it
        after = max(at - CONTEXT_BEFORE_HIT - 1, 0)
    messages, more = await _read_page(view, session_id, branch=branch, raw=raw, before=before, after=after)
    switched = False
    if at is not None and not raw and all(m.seq != at for m in messages):
        # The hit is in a message a summary replaced: show the stored messages.
        messages, more = await _read_page(view, session_id, branch=branch, raw=True, before=None, after=after)
        raw, switched = True, True
    branches = await view.list_branches(session_id)

    def link(**changes: Any) -> str:
        params = {"branch": branch if branch != "main" else None, "raw": "1" if raw else None, **changes}
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return _session_url(session.id) + (f"?{query}" if query else "")

    paging_forward = after is not None
    earlier = later = None
    if messages:
        first = messages[0]
        if more and not paging_forward:
            earlier = link(before=first.seq)
        elif paging_forward and after:
            # Paging on from a message number (a search hit's): whether anything comes before
            # is only known by asking. A summary with nothing before it in the compacted view
            # leads to the messages it replaced, in the stored view.
            if await view.get_messages(session_id, limit=1, before_seq=first.seq, branch=branch, raw=raw):
                earlier = link(before=first.seq)
            elif first.covers is not None and not raw:
                earlier = link(raw="1", before=first.seq)
        if (more and paging_forward) or before is not None:
            later = link(after=messages[-1].seq)
    return render(
        "session.html",
        viewer=viewer,
        session=session,
        title=title_of(session.metadata, session.id),
        entries=entries(messages),
        branches=branches,
        branch=branch,
        raw=raw,
        switched=switched,
        has_summaries=raw or any(m.covers is not None for m in messages),
        raw_link=link(raw=None if raw else "1"),
        earlier=earlier,
        later=later,
        export="/ui/export?" + urlencode({"session_id": session.id}),
        delete=_session_url(session.id, "delete"),
        metadata=json.dumps(session.metadata, indent=2, ensure_ascii=False) if session.metadata else None,
    )


@router.get("/export")
async def export(request: Request, viewer: SignedIn) -> Response:
    """Download a session (or a user's sessions) as JSON Lines."""
    sid, user = _id_param(request, "session_id"), _param(request, "user_id")
    body = await jsonl_export(viewer.view, user_id=user, session_id=sid)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", sid or user or "export")[:80].strip("._") or "export"
    return StreamingResponse(
        body,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="convostore-{stem}.jsonl"'},
    )


# -- search -----------------------------------------------------------------------------------


@router.get("/search")
async def search(request: Request, viewer: SignedIn) -> Response:
    """Full-text search of the messages, hits highlighted, each linking to its message."""
    q, user, agent = _param(request, "q"), _param(request, "user"), _param(request, "agent")
    offset = _seq_param(request, "offset") or 0
    hits: list[dict[str, Any]] = []
    more = None
    if q is not None:
        found = await viewer.view.search(q, user_id=user, agent_name=agent, limit=HITS_PAGE + 1, offset=offset)
        for h in found[:HITS_PAGE]:
            params = {"at": h.seq, **({"branch": h.branch} if h.branch != "main" else {})}
            hits.append(
                {
                    "hit": h,
                    "parts": snippet_parts(h.snippet),
                    "href": f"{_session_url(h.session_id)}?{urlencode(params)}#m-{h.seq}",
                }
            )
        if len(found) > HITS_PAGE:
            kept = {k: v for k, v in (("q", q), ("user", user), ("agent", agent)) if v}
            more = "/ui/search?" + urlencode({**kept, "offset": offset + HITS_PAGE})
    return render(
        "search.html",
        viewer=viewer,
        q=q or "",
        filters={"user": user or "", "agent": agent or ""},
        hits=hits,
        searched=q is not None,
        more=more,
        offset=offset,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n:,} {noun}s"


def _path(segment: str) -> str:
    return quote(segment, safe="")


def _session_url(session_id: str, *rest: str) -> str:
    """The browser's URL of a session (or of one of its pages): the id is one path segment,
    whatever it holds ("/", "?", "#", "%")."""
    return "/".join(("/ui/sessions", _path(session_id), *rest))


def mount(app: FastAPI) -> None:
    """Add the browser's pages, its static files and its redirects to *app*."""

    async def on_redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Redirect)
        return RedirectResponse(exc.url, status_code=303)

    async def root() -> RedirectResponse:
        # Someone opening the server's address in a browser: the API has no page there.
        return RedirectResponse("/ui/sessions", status_code=303)

    app.add_exception_handler(_Redirect, on_redirect)
    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")
