"""ASGI middleware of the service, outermost first:

    Guard       security headers on every answer, any uncaught exception as a JSON 500, metrics
    HostCheck   --allowed-hosts: the Host header must match (Starlette TrustedHostMiddleware's rules:
                exact names, "*.example.com", "*"), else a JSON 400
    ApiKey      --api-key: `Authorization: Bearer KEY` on everything but /health, /ready and the page
    BodyLimit   request bodies over the limit: 413, by Content-Length or while streaming

Every refusal is JSON {"error": one line, "detail": ...}, as the endpoints' errors are.

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("attnlab.serve")

# the page and the API: scripts, styles and connections from this origin only, never framed
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs (only with --docs): Swagger UI from its CDN
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]


async def send_json_error(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Outermost: headers, a JSON 500 for anything uncaught, and per-request metrics."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, int, float], None], docs_paths: tuple[str, ...] = ()):
        self.app, self.observe, self.docs_paths = app, observe, docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 0
        csp = (DOCS_CSP if scope["path"] in self.docs_paths else CSP).encode()

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS + [(b"content-security-policy", csp)] if k not in have]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as err:  # the catch-all: JSON, never a bare 500
            log.exception("unhandled error on %s", scope["path"])
            if status:  # the answer had started: nothing more can be said
                raise
            await send_json_error(guarded_send, 500, f"internal error ({type(err).__name__}); "
                                                     "the request failed, the service goes on")
        finally:
            self.observe(scope["path"], status or 500, time.perf_counter() - start)


class HostCheck:
    """Starlette's TrustedHostMiddleware, answering a wrong Host with JSON instead of plain text."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str], reject: Callable[[str], None]):
        self.app, self.reject = app, reject

        async def passed(scope: Scope, receive: Receive, send: Send) -> None:
            scope["attnlab.host_ok"] = True
            await app(scope, receive, send)

        self.trusted = TrustedHostMiddleware(passed, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.trusted(scope, receive, send)

        async def json_send(message: Message) -> None:
            if scope.get("attnlab.host_ok"):
                return await send(message)
            if message["type"] == "http.response.start":  # TrustedHostMiddleware's refusal
                self.reject("host")
                host = Headers(scope=scope).get("host", "").split(":")[0]
                await send_json_error(send, 400, f"host {host!r} is not served here (--allowed-hosts)")

        await self.trusted(scope, receive, json_send)


class ApiKey:
    """`Authorization: Bearer KEY` required, except on the open paths (health probes, the page)."""

    OPEN = ("/health", "/ready", "/", "/favicon.ico")

    def __init__(self, app: ASGIApp, key: str, reject: Callable[[str], None]):
        self.app, self.key, self.reject = app, key.encode(), reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.OPEN or path.startswith("/static/"):
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            return await self.app(scope, receive, send)
        self.reject("auth")
        message = ("a valid API key is required: send 'Authorization: Bearer KEY'" if not given
                   else "the API key is wrong (send 'Authorization: Bearer KEY')")
        await send_json_error(send, 401, message, {"WWW-Authenticate": "Bearer"})


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


async def _drain(receive: Receive, seen: int, bound: int) -> None:
    """Read and drop the rest of a refused body (up to `bound` bytes in all): a client still sending
    when the server closes the connection gets a reset, not the 413 that explains it."""
    while seen <= bound:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimit:
    """Refuse bodies over the limit (by Content-Length, or while streaming). Bodies up to
    `drain_factor` times the limit are read to the end first, so that the client reads the 413."""

    drain_factor = 16

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int], reject: Callable[[str], None]):
        self.app, self.default, self.per_path, self.reject = app, default, per_path, reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope["path"], self.default)
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            self.reject("body_size")
            err = BodyTooLarge(limit)
            if declared <= self.drain_factor * limit:
                await _drain(receive, 0, self.drain_factor * limit)
            return await send_json_error(send, err.status_code, err.detail, {"connection": "close"})
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as err:
            if started:
                raise
            self.reject("body_size")
            await _drain(receive, seen, self.drain_factor * limit)
            await send_json_error(send, err.status_code, err.detail, {"connection": "close"})
