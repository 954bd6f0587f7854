"""A client retries a transaction whose first try stored its body (an ingress killed
before it could answer ``250``): while the first envelope is queued, the retry reuses its
object; once that mail was delivered (the message acked, its body removed), the retry stores
the body again, JetStream drops the envelope as a duplicate, and the ingress removes the
object it wrote, so no object is left that no mail names. Run as the ingress's own NATS
user, against the generated permissions."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from ingress import storing
from runtime import bodystore, bus
from schemas import mail, names
from tests.support.secured import BUS, Secured

BODY = secrets.token_bytes(300 * 1024)
INLINE_LIMIT = 64 * 1024


def _envelope(mail_id: str) -> mail.Envelope:
    return mail.Envelope(id=mail_id, policy="apps/relay", upstream="apps/sink",
                         mail_from="a@example.org", rcpt_to=["b@example.org"],
                         received_at=datetime.now(UTC), size=len(BODY))


async def _bodies_messages(conn: bus.Conn) -> int:
    """Every message of the BODIES stream: metas, delete markers and chunks alike."""
    info = await conn.js.stream_info(names.obj_stream(conn.names.bodies_bucket))
    return info.state.messages


async def _publish(conn: bus.Conn, env: mail.Envelope) -> object:
    return await storing.publish(conn, env, BODY, inline_limit=INLINE_LIMIT, timeout_s=5.0)


async def test_a_retry_of_delivered_mail_leaves_no_body_and_a_queued_ones_keeps_it(
    secured: Secured,
) -> None:
    owner = await bus.open_connection(secured.settings("reconciler"), "reconciler",
                                      attempts=1)
    ingress = await bus.open_connection(secured.settings("ingress"), "ingress", attempts=1)
    admin = await bus.open_connection(secured.settings("admin"), "admin", attempts=1)
    try:
        await bus.ensure(owner, names.Retention(), 1)
        env = _envelope("retried")
        first = await _publish(ingress, env)
        assert not first.duplicate
        stored = await _bodies_messages(admin)
        assert stored > 1  # chunks and a meta

        # The first envelope still queued: the retry reuses its object, which stays.
        queued_retry = await _publish(ingress, env)
        assert queued_retry.duplicate and queued_retry.seq == first.seq
        assert await _bodies_messages(admin) == stored
        assert (await (await bus.bodies(admin)).get(env.id)).data == BODY

        # Delivered: the dispatcher acked it (it left MAIL) and removed its body.
        await admin.js.delete_msg(BUS.mail_stream, first.seq)
        await bodystore.purge(admin, await bus.bodies(admin), env.id)
        assert await _bodies_messages(admin) == 0
        late_retry = await _publish(ingress, env)
        assert late_retry.duplicate and late_retry.seq == first.seq
        assert await _bodies_messages(admin) == 0  # no object, chunk or delete marker

        # A mail whose first try never got its envelope stored keeps the retry's body.
        fresh = _envelope("cut-before-publish")
        await (await bus.bodies(ingress)).put(fresh.id, BODY)
        ack = await _publish(ingress, fresh)
        assert not ack.duplicate
        assert (await (await bus.bodies(admin)).get(fresh.id)).data == BODY
    finally:
        for conn in (owner, ingress, admin):
            await conn.nc.close()
