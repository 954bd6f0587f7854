"""`podpost dev --tls`'s self-signed certificate: made once, loadable by the ingress."""

from __future__ import annotations

import ssl
from pathlib import Path

from ingress import tlsconfig
from podpost import devmode


def test_the_dev_certificate_serves_localhost_and_is_kept(tmp_path: Path) -> None:
    """The pair loads as the ingress's TLS configuration, names localhost and 127.0.0.1,
    keeps its key private, and a second call reuses it."""
    cert_file, key_file = devmode.self_signed(tmp_path / "tls")
    config = tlsconfig.load(str(cert_file), str(key_file))
    assert config is not None
    info = ssl._ssl._test_decode_cert(str(cert_file))  # type: ignore[attr-defined]
    assert ("DNS", "localhost") in info["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in info["subjectAltName"]
    assert key_file.stat().st_mode & 0o077 == 0
    before = cert_file.read_bytes()
    assert devmode.self_signed(tmp_path / "tls") == (cert_file, key_file)
    assert cert_file.read_bytes() == before
