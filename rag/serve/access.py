"""Who may use the server, from where, and with what: API keys (read-only or admin) sent as
`Authorization: Bearer KEY` or, in a browser, held in a login cookie; no request from a page of
another site unless its origin is listed; request bodies capped before anything parses them;
security headers on every response; and which models a client may choose.

The checks are ASGI middleware around the whole app (API, document pages and the Gradio
interface alike), so no route, ours or Gradio's, can be added without them."""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Mapping
from enum import IntEnum
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from rag.config import EXTRACTIVE, ServerSettings
from rag.errors import BadInputError
from rag.text.words import is_unicode_text


class Role(IntEnum):
    READ = 1  # search, ask, check, list and read documents
    ADMIN = 2  # also add and remove documents, and read the metrics


SESSION_COOKIE = "rag_session"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
# Prometheus metrics: the operator's view of all clients' traffic, so an admin's (rag/serve/metrics.py).
METRICS_PATH = "/metrics"
# Open without a key: a load balancer's health probe, and logging in and out.
PUBLIC_PATHS = frozenset({"/health", LOGIN_PATH, LOGOUT_PATH})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Gradio's upload endpoint only serves the interface's "Add documents" box.
GRADIO_UPLOAD_PATH = "/gradio_api/upload"
MIN_KEY_CHARS = 16
NEW_KEY_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Keys:
    """The configured keys, and the login cookie that stands for each: an HMAC of the key under
    a secret of this process, so the cookie never holds the key and ends with the server."""

    def __init__(self, read: Iterable[str] = (), admin: Iterable[str] = ()):
        admin = list(admin)
        self._keys = [(key, Role.ADMIN) for key in admin] + [(key, Role.READ) for key in read if key not in admin]
        self._secret = secrets.token_bytes(32)
        self._sessions = [(self.session_token(key), role) for key, role in self._keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def session_token(self, key: str) -> str:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()

    def key_role(self, key: str) -> Role | None:
        return _match(self._keys, key)

    def role(self, headers: Mapping[str, str]) -> Role | None:
        """The role of a request: its Bearer key if it sends one, else its login cookie."""
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self.key_role(credential.strip())
        token = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        return _match(self._sessions, token) if token else None


def _match(known: list[tuple[str, Role]], given: str) -> Role | None:
    """The highest role among the entries equal to `given`; every entry is compared, each in
    constant time, so timing tells nothing about how close a guess came."""
    found = None
    for value, role in known:
        if hmac.compare_digest(value.encode(), given.encode()):
            found = role if found is None else max(found, role)
    return found


def load_keys(server: ServerSettings) -> Keys:
    """The keys of the settings plus those of `api_key_file`; a key too short to be secret or
    that cannot travel in a header is refused."""
    read, admin = list(server.api_keys), list(server.admin_keys)
    if server.api_key_file is not None:
        try:
            lines = server.api_key_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(
                f"cannot read server.api_key_file {server.api_key_file}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        for line in (line.strip() for line in lines):
            if line.startswith("admin:"):
                admin.append(line.removeprefix("admin:").strip())
            elif line and not line.startswith("#"):
                read.append(line)
    for key in read + admin:
        if len(key) < MIN_KEY_CHARS or not key.isascii() or not key.isprintable() or " " in key:
            raise BadInputError(
                f"an API key must be at least {MIN_KEY_CHARS} printable ASCII characters without spaces; make one with: {NEW_KEY_HINT}"
            )
    return Keys(read, admin)


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one (127.0.0.1, ::1, localhost)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_client_model(server: ServerSettings, default_model: str, model: str | None, api_base: str | None) -> None:
    """Refuse a model or `api_base` that a client of the server may not choose: another model may
    spend the server's API credits, and `api_base` makes the server connect wherever it says.
    The CLI runs as its user and is not asked."""
    if api_base and not server.allow_client_api_base:
        raise BadInputError("api_base is not accepted from clients of this server (server.allow_client_api_base)")
    allowed = {default_model, EXTRACTIVE, *server.allow_client_models}
    if model and model not in allowed and "*" not in allowed:
        raise BadInputError(
            f"model '{model}' is not offered by this server: use {default_model} or {EXTRACTIVE} (server.allow_client_models lists others)"
        )


# --------------------------------------------------------------------------- middleware


def _refusal(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _refuse(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":  # a handshake cannot carry a JSON body
        await WebSocketClose(code=1008)(scope, receive, send)
    else:
        await response(scope, receive, send)


def needs_admin(method: str, path: str) -> bool:
    """Requests that change the documents (uploads and removals, over the API or the
    interface), and the metrics."""
    changes_documents = method in WRITE_METHODS and (path == "/documents" or path.startswith("/documents/"))
    return changes_documents or path in (GRADIO_UPLOAD_PATH, METRICS_PATH)


class AccessMiddleware:
    """With keys set: 401 without a valid key (a browser asking for a page is sent to the login
    form instead), 403 when a read-only key tries to change the documents."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys.enabled or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        role = self.keys.role(headers)
        method = scope.get("method", "GET")
        if role is None and method == "GET" and "text/html" in headers.get("accept", ""):
            await _refuse(RedirectResponse(LOGIN_PATH, status_code=303), scope, receive, send)
        elif role is None:
            detail = "missing or unknown API key: send the header Authorization: Bearer KEY"
            await _refuse(_refusal(401, detail, {"WWW-Authenticate": "Bearer"}), scope, receive, send)
        elif role < Role.ADMIN and needs_admin(method, scope["path"]):
            detail = "adding and removing documents, and the metrics, need an admin key; this key may only search, ask, check and read"
            await _refuse(_refusal(403, detail), scope, receive, send)
        else:
            await self.app(scope, receive, send)


def same_origin(origin: str, host: str) -> bool:
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


class SameOriginMiddleware:
    """403 for any request a page of another site sends: its Origin header is neither this
    server's own nor listed in `cors_origins`. Browsers send Origin with every cross-origin fetch
    and every POST/PUT/DELETE (a multipart form posted from another site included); curl and
    scripts send none and are judged by their key alone."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app, self.allowed = app, frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and origin not in self.allowed and not same_origin(origin, headers.get("host", "")):
                detail = f"requests from pages of {origin} are refused (server.cors_origins lists the origins allowed)"
                await _refuse(_refusal(403, detail), scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes, judged by its Content-Length and, as it arrives, by
    what is actually sent; the app then receives the whole body at once, so nothing parses a
    byte of a body that is too large."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # a streaming response listens for the disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body over {self.limit:,} bytes (server.max_body_bytes)"
        await _refusal(413, detail)(scope, receive, send)


# Pages we render ourselves (the document view, the login form) run no script at all.
# The document page shows a PDF's pages as images from this server (/page-image/).
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
# The Gradio interface: its own scripts, inline bootstrap and styles, nothing from elsewhere.
# Gradio turns event `js=` strings (our remove confirmation among them) into functions at run
# time, which needs 'unsafe-eval'; without it the interface does not start.
APP_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' blob:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from jsDelivr.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)


def content_policy(path: str) -> str:
    if path.startswith("/view/") or path == LOGIN_PATH:
        return PAGE_POLICY
    return DOCS_POLICY if path in ("/docs", "/redoc") else APP_POLICY


class SecurityHeadersMiddleware:
    """Headers on every response: a Content-Security-Policy, no MIME sniffing, no framing by
    other sites (clickjacking), and no Referer carrying document ids to other sites."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = content_policy(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                # same-origin, not no-referrer: under no-referrer browsers send `Origin: null`
                # with form posts, and the login form would be refused as cross-origin.
                headers.setdefault("Referrer-Policy", "same-origin")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def protect(app, server: ServerSettings, keys: Keys) -> None:
    """Wrap a Starlette/FastAPI app in the middleware above. The last added runs first: headers
    on every answer, then the origin, CORS for the listed origins, the key, and the body size
    (read only once the key is known good)."""
    app.add_middleware(BodyLimitMiddleware, limit=server.max_body_bytes)
    app.add_middleware(AccessMiddleware, keys=keys)
    if server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SameOriginMiddleware, allowed=server.cors_origins)
    app.add_middleware(SecurityHeadersMiddleware)


# --------------------------------------------------------------------------- login


def login_page(error: str = "") -> str:
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Cited answers</title>
<style>
body {{ font: 17px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 24rem; margin: 5rem auto; padding: 0 1rem; color: #1f2933; }}
input {{ width: 100%; box-sizing: border-box; font: inherit; padding: .5rem; margin: .5rem 0 1rem; }}
button {{ font: inherit; padding: .5rem 1.2rem; }} .error {{ color: #b42318; }}
</style></head><body>
<h1>Cited answers</h1>{message}
<form method="post" action="{LOGIN_PATH}"><label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form>
</body></html>"""


def login_response(keys: Keys, key: str, secure: bool) -> Response:
    """After a good key: the interface, with a login cookie scripts cannot read (HttpOnly) and
    other sites cannot make the browser send (SameSite=Strict)."""
    if keys.key_role(key) is None:
        return Response(login_page("That key is not valid."), status_code=401, media_type="text/html")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, keys.session_token(key), httponly=True, samesite="strict", secure=secure)
    return response


def logout_response() -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    return response


# --------------------------------------------------------------------------- text at the edge


def lone_surrogate_field(value: object, path: str = "") -> str | None:
    """Where in a parsed JSON body (`history[0].question`) the first such string lies."""
    if isinstance(value, str):
        return None if is_unicode_text(value) else path or "body"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not is_unicode_text(key):
            return path or "body"
        found = lone_surrogate_field(
            item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key
        )
        if found is not None:
            return found
    return None
