"""The chat page: `/` (static/index.html) and its files under `/static/` (static/js: the page's own modules,
unbuilt; static/vendor: markdown-it, DOMPurify, highlight.js and KaTeX, built by webui/build.mjs and committed).

Everything comes from this server, nothing from another host, so the page works offline. The page's
Content-Security-Policy runs only this server's scripts (no inline script at all), lets it talk only to this
server, and (in browsers that have Trusted Types) lets nothing write HTML that DOMPurify has not returned.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "style-src-attr 'unsafe-inline'",  # KaTeX positions glyphs with style attributes (no script can run there)
        "font-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types dompurify",  # the one policy allowed to make HTML: DOMPurify's own
    )
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@functools.lru_cache(maxsize=1)
def _page_source() -> str:
    return (resources.files(__package__) / "static" / "index.html").read_text(encoding="utf-8")


async def page(request: Request) -> Response:
    return HTMLResponse(
        _page_source(), headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    )


class _Revalidate:
    """The files keep their names from one version to the next: browsers must ask again (ETag, 304)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"cache-control", b"no-cache")] + [
                    (k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                ]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, with_headers)


def static_files() -> ASGIApp:
    """The files under static/, gzipped for browsers that ask (the scripts shrink to about a third)."""
    files = StaticFiles(packages=[(__package__, "static")])
    return GZipMiddleware(_Revalidate(files), minimum_size=1024)
