"""The ingress's TLS certificate: read from files, and read again when they change.

The certificate and key come from files, typically a mounted Secret that cert-manager
renews; a renewal must reach new sessions without a restart. Every change builds a new
`ssl.SSLContext` (a half-written pair is refused and the old one kept). The listeners and
every STARTTLS hold one stable `front` context whose SNI callback (OpenSSL calls it on
every ClientHello, with or without SNI) hands the handshake the newest context, so
neither the implicit-TLS listener nor the sessions need to know a reload happened.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass

import structlog

from runtime import waiting

log = structlog.get_logger("ingress.tlsconfig")


class TLSError(Exception):
    """The certificate or key cannot be loaded (one line: which file, why)."""


@dataclass(frozen=True)
class _Stamp:
    """What tells a changed file: a Secret volume swaps a symlink, so a rename changes
    the inode; an edit in place changes the mtime or the size."""

    cert: tuple[int, int, int]
    key: tuple[int, int, int]


def _stat(path: str) -> tuple[int, int, int]:
    st = os.stat(path)  # follows the ..data symlink of a Secret volume
    return st.st_ino, st.st_mtime_ns, st.st_size


def _context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot load TLS certificate {cert_file} with key {key_file}: "
                       f"{exc}") from exc
    return context


class TLSConfig:
    """The current certificate of one ingress; `front` is the context to serve with."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.reloads = 0
        """How many times a changed pair was loaded after the first."""
        try:
            self._stamp = self._read_stamp()
        except OSError as exc:
            raise TLSError(f"cannot read TLS certificate or key: {exc}") from exc
        self.current = _context(cert_file, key_file)
        self.front = _context(cert_file, key_file)
        self.front.sni_callback = self._choose

    def _read_stamp(self) -> _Stamp:
        return _Stamp(cert=_stat(self.cert_file), key=_stat(self.key_file))

    def _choose(self, sslobj: ssl.SSLObject, name: str | None, front: ssl.SSLContext
                ) -> None:
        sslobj.context = self.current

    def check(self) -> bool:
        """Load the pair again when a file changed; True when a new context now serves.
        A pair that does not load (a renewal half written) keeps the old one."""
        try:
            stamp = self._read_stamp()
        except OSError as exc:
            log.warning("ingress.tls_unreadable", error=str(exc))
            return False
        if stamp == self._stamp:
            return False
        try:
            context = _context(self.cert_file, self.key_file)
        except TLSError as exc:
            log.warning("ingress.tls_reload_failed", error=str(exc))
            return False
        self._stamp, self.current = stamp, context
        self.reloads += 1
        log.info("ingress.tls_reloaded", cert_file=self.cert_file, reloads=self.reloads)
        return True

    async def watch(self, stop: asyncio.Event, interval_s: float) -> None:
        """Check the files every ``interval_s`` until ``stop``."""
        while not await waiting.sleep_or_stop(stop, interval_s):
            self.check()


def load(cert_file: str, key_file: str) -> TLSConfig | None:
    """The TLS configuration of the settings: None without a certificate; `TLSError`
    when only one of the two files is named or the pair does not load."""
    if not cert_file and not key_file:
        return None
    if not cert_file or not key_file:
        raise TLSError("TLS needs both PODPOST_INGRESS__TLS_CERT_FILE and "
                       "PODPOST_INGRESS__TLS_KEY_FILE")
    return TLSConfig(cert_file, key_file)
