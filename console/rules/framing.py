"""The headers that keep what the console shows harmless.

A caught mail is whatever an application sent, a test of an attacker's HTML included. The
console page itself runs only its own script (``script-src 'self'``) and renders every
value with ``textContent``. A mail's HTML is served on its own URL, under a policy that
forbids every script and, unless asked, every remote resource (no tracking pixels, no
fonts, no styles from elsewhere), and the page shows it in an ``<iframe sandbox>`` without
``allow-scripts`` or ``allow-same-origin``: the frame's document has an opaque origin, so
it can neither run code nor read the console's API. Pure: strings in, strings out.
"""

from __future__ import annotations

import urllib.parse

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-src 'self'; form-action 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
"""The console's own pages and API."""

MAIL_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data: cid:; "
            "font-src data:; form-action 'none'; base-uri 'none'; "
            "frame-ancestors 'self'; sandbox")
"""A mail's HTML: no script of any kind, no remote content, only inside our frame."""

MAIL_CSP_REMOTE = ("default-src 'none'; style-src 'unsafe-inline' https: http:; "
                   "img-src data: cid: https: http:; font-src data: https: http:; "
                   "form-action 'none'; base-uri 'none'; frame-ancestors 'self'; sandbox")
"""A mail's HTML when the viewer asked for remote images and styles: still no script."""


def mail_csp(*, remote: bool) -> str:
    return MAIL_CSP_REMOTE if remote else MAIL_CSP


def common_headers() -> dict[str, str]:
    """On every response."""
    return {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store"}


def download_disposition(filename: str) -> str:
    """``Content-Disposition`` of a download: always ``attachment``, so a browser never
    renders an attachment as a page of the console's origin; the name is RFC 6266-quoted,
    with an ASCII fallback whose quotes and path separators are gone."""
    fallback = "".join(ch if ch.isascii() and ch.isprintable() and ch not in '"\\/;'
                       else "_" for ch in filename) or "attachment"
    quoted = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"
