"""`ingress.tlsconfig`: the certificate files, checked for changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from ingress import tlsconfig


def write_pair(ca: trustme.CA, cert_file: Path, key_file: Path, name: str) -> None:
    cert = ca.issue_cert("localhost", common_name=name)
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))


def test_a_changed_pair_is_loaded_and_a_broken_one_keeps_the_old(tmp_path: Path) -> None:
    """Unchanged files load nothing; a renewed pair is a new context; a half-written
    certificate is refused and the last good context keeps serving."""
    ca = trustme.CA()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(ca, cert_file, key_file, "first")
    config = tlsconfig.TLSConfig(str(cert_file), str(key_file))
    first = config.current
    assert config.check() is False and config.current is first
    write_pair(ca, cert_file, key_file, "second")
    assert config.check() is True and config.current is not first
    second = config.current
    cert_file.write_text("-----BEGIN CERTIFICATE-----\nhalf")
    assert config.check() is False and config.current is second
    assert config.reloads == 1


def test_one_file_without_the_other_is_an_error(tmp_path: Path) -> None:
    """A certificate without a key (or the reverse) is one error naming both variables;
    neither means no TLS."""
    assert tlsconfig.load("", "") is None
    with pytest.raises(tlsconfig.TLSError, match="PODPOST_INGRESS__TLS_KEY_FILE"):
        tlsconfig.load(str(tmp_path / "tls.crt"), "")
