"""The common RFC 5321 path, parsed fast: ``<local@domain>`` with dot-atom parts, as
nearly every client sends it in ``MAIL FROM`` and ``RCPT TO``.

aiosmtpd parses every path with the e-mail *header* parser (``get_angle_addr``), which
builds a token tree and creates a class per call: about a sixth of the ingress's CPU with
a new connection per mail. `parse` reads the common form with one regular expression and
returns what aiosmtpd's ``_getaddr`` returns for it, ``(address, rest)``; for anything
else (quoted local parts, address literals, source routes, comments, non-ASCII, the null
path, a missing ``>``) it returns None, and the caller asks aiosmtpd, so every reply stays
aiosmtpd's. tests/unit/test_ingress_paths.py checks that against aiosmtpd for any input.
"""

from __future__ import annotations

import re

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")
"""``<`` dot-atom ``@`` dot-atom ``>``; the parameters follow."""


def parse(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` of a path in its common form, or None: ask the full parser."""
    match = _PATH.match(arg)
    if match is None:
        return None
    rest = arg[match.end():]
    if rest[:1] in (" ", "\t"):
        rest = rest.lstrip()  # folding white space, as the header parser strips it
    if rest[:1] == "(":
        return None  # a comment
    return match.group(1), rest
