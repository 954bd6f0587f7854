"""`podpost dev --tls`'s self-signed certificate, and the TLS and PROXY settings the ingress
command checks before it starts."""

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


def test_a_bad_ingress_tls_setting_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    """`podpost ingress` with a certificate file that is not one, or an implicit-TLS port
    without a certificate, exits 2 with one error line naming the problem."""
    from typer.testing import CliRunner

    from podpost import cli

    bad = tmp_path / "tls.crt"
    bad.write_text("not a certificate")
    runner = CliRunner()
    cases = [
        ({"PODPOST_INGRESS__TLS_CERT_FILE": str(bad),
          "PODPOST_INGRESS__TLS_KEY_FILE": str(bad)}, "cannot load TLS certificate"),
        ({"PODPOST_INGRESS__TLS_PORT": "4650"}, "PODPOST_INGRESS__TLS_PORT needs a certificate"),
        ({"PODPOST_INGRESS__PROXY_PROTOCOL_CIDRS": "10.0.0.0/33"},
         "PODPOST_INGRESS__PROXY_PROTOCOL_CIDRS"),
    ]
    for env, message in cases:
        result = runner.invoke(cli.app, ["ingress"], env=env)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
