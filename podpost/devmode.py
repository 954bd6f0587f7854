"""``podpost dev``: an embedded nats-server and every role in one process.

The store lives under ``.podpost/`` in the current directory (``--state-dir`` moves it), so
queued mail survives a restart of ``podpost dev`` from there. The policies come from the dev
policy shipped in the package unless ``--policies`` names another file. ``--tls`` makes a
self-signed certificate for ``localhost`` and 127.0.0.1 under ``<state-dir>/tls`` (kept
across restarts) and offers STARTTLS with it, for apps that will not send without TLS.

The web console runs beside the roles on 127.0.0.1 (``--console-port``, 0 turns it off).
Without ``PODPOST_CONSOLE__TOKEN`` a token for its actions is made up for this run and
printed with the URL: the console only listens on loopback, and whoever runs ``podpost
dev`` is its operator.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import secrets
from pathlib import Path

import msgspec
import structlog
from rich.console import Console

from podpost import natsserver, process
from runtime import logs
from runtime import settings as settings_mod

log = structlog.get_logger("podpost.dev")


async def _run(cfg: settings_mod.Settings, nats_port: int, state_dir: Path, console: bool
               ) -> None:
    from console import main as console_main
    from dispatcher import main as dispatcher_main
    from ingress import main as ingress_main
    from reconciler import main as reconciler_main

    async with natsserver.running(state_dir / "nats", port=nats_port) as server:
        cfg = msgspec.structs.replace(
            cfg, nats=msgspec.structs.replace(cfg.nats, url=server.url)
        )
        serves: dict[str, process.Serve] = {
            "reconciler": reconciler_main.serve,
            "ingress": ingress_main.serve,
            "dispatcher": dispatcher_main.serve,
        }
        seen = ""
        if console:
            token = "from PODPOST_CONSOLE__TOKEN"
            if not cfg.console.token:
                made = secrets.token_urlsafe(16)
                cfg = msgspec.structs.replace(cfg, console=msgspec.structs.replace(
                    cfg.console, token=made))
                token = f"[green]{made}[/green]"
            url = console_main.url_of(cfg.console.host, cfg.console.port)
            seen = f"\n  web console: [green]{url}[/green] (token for actions: {token})"
            serves["console"] = console_main.serve
        Console(stderr=True).print(
            f"[bold]podpost dev[/bold]: SMTP on [cyan]{cfg.ingress.host}:{cfg.ingress.port}"
            f"[/cyan], NATS on [cyan]{server.url}[/cyan], policies from "
            f"[cyan]{cfg.reconciler.file}[/cyan]. Ctrl-C stops it.\n"
            f"  see caught mail: [green]PODPOST_NATS_URL={server.url} podpost caught list"
            f"[/green]{seen}"
        )
        await process.supervise(cfg, serves)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for ``localhost`` and 127.0.0.1 in
    ``directory`` (``tls.crt``, ``tls.key``), made once and reused afterwards."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    if cert_file.is_file() and key_file.is_file():
        return cert_file, key_file
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podpost dev")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def run(cfg: settings_mod.Settings, *, nats_port: int, state_dir: Path, console: bool = True
        ) -> None:
    logs.configure(cfg.log)
    asyncio.run(_run(cfg, nats_port, state_dir, console))
