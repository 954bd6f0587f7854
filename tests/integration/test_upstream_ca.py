"""An SMTPServer's own private CA (`spec.tlsCA`), end to end: the PEM in a ConfigMap or a
Secret document of the file source, through the reconciler's builder and publishing into
the CREDENTIALS bucket, to a dispatcher that trusts it for that upstream only."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trustme

from loadkit import upstream as upstream_mod
from reconciler import publishing
from reconciler.rules import building, credentials, documents
from runtime import bus, settings
from schemas import events, snapshot
from tests.support import dispatching as d

SERVER = """\
apiVersion: kube-mail.helmich.me/v1alpha1
kind: SMTPServer
metadata: {{name: relay, namespace: mail}}
spec:
  server: 127.0.0.1
  port: {port}
  connect: {connect}
  tlsCA: {{{ref}: {{name: company-ca{key}}}}}
---
apiVersion: kube-mail.helmich.me/v1alpha1
kind: EmailPolicy
metadata: {{name: web, namespace: mail}}
spec:
  sink: {{smtp: {{server: {{name: relay}}}}}}
"""


def _holder(kind: str, pem: str) -> str:
    """The CA's PEM as a v1 ConfigMap (``data``, key ca.crt) or Secret (``data`` base64,
    key tls-ca.pem) document."""
    if kind == "configMapKeyRef":
        body = "\n".join(f"    {line}" for line in pem.splitlines())
        return ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: company-ca, "
                f"namespace: mail}}\ndata:\n  ca.crt: |\n{body}\n")
    encoded = base64.b64encode(pem.encode()).decode()
    return ("apiVersion: v1\nkind: Secret\nmetadata: {name: company-ca, namespace: mail}\n"
            f"data: {{tls-ca.pem: {encoded}}}\n")


@pytest.fixture
async def private_upstream(request: pytest.FixtureRequest) -> AsyncIterator[
        tuple[upstream_mod.Upstream, trustme.CA, bool]]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    implicit = bool(request.param)
    up = await upstream_mod.start(tls_context=context, implicit_tls=implicit)
    try:
        yield up, ca, implicit
    finally:
        await up.close()


@pytest.mark.parametrize("private_upstream", [True, False], indirect=True,
                         ids=["ssl", "starttls"])
@pytest.mark.parametrize("ref", ["configMapKeyRef", "secretKeyRef"])
async def test_the_ca_an_smtpserver_names_is_trusted_for_its_upstream(
    ref: str, private_upstream: tuple[upstream_mod.Upstream, trustme.CA, bool],
    conn: bus.Conn, nats_settings: settings.NatsSettings,
) -> None:
    """An upstream whose certificate only a private CA vouches for gets the mail over
    TLS when its SMTPServer names that CA; the dispatcher has no CA file of its own."""
    up, ca, implicit = private_upstream
    pem = ca.cert_pem.bytes().decode()
    text = SERVER.format(port=up.port, connect="ssl" if implicit else "starttls", ref=ref,
                         key="" if ref == "configMapKeyRef" else ", key: tls-ca.pem")
    inputs = documents.parse(text + "---\n" + _holder(ref, pem), path="policies.yaml")
    result = building.build(inputs, now=datetime.now(UTC), source="file:policies.yaml")
    view = result.snapshot.upstreams["mail/relay"]
    assert view.tls_ca == credentials.ca_key(pem)
    assert result.cas == {view.tls_ca: snapshot.TrustedCA(pem=pem)}
    await publishing.publish(conn, result)

    policy = result.snapshot.policies["mail/web"]
    env = d.envelope(policy, ["you@example.org"])
    cfg = d.config(nats_settings)
    assert cfg.dispatcher.tls_ca_file is None and cfg.dispatcher.tls_verify
    async with d.recording_events(conn) as seen, d.dispatcher(cfg):
        await d.queue(conn, env)
        [received] = await up.handler.wait_for(1)
        await d.eventually(lambda: bool(d.of_kind(seen, events.Delivered)))
    assert received.tls and received.rcpt_to == ["you@example.org"]
    assert not d.of_kind(seen, events.Deferred)
