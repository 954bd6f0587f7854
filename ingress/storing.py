"""Persist one accepted mail on the bus before the client hears ``250``.

The envelope goes to the MAIL stream with ``Nats-Msg-Id`` = the mail id, and only a PubAck
counts: any broker error or a PubAck later than the deadline becomes `PublishFailed`,
which the handler answers with ``451``. A body over the inline limit (or one whose
envelope would not fit the server's max payload) goes to the BODIES object store first,
under the mail id. An object, once written, is never rewritten: a retried transaction
reuses it, so every envelope naming an object agrees with its size and digest.

A retry can come after its first try's envelope was stored *and delivered*: the
dispatcher has removed the body, this transaction stores it again, and JetStream drops the
envelope as a duplicate. Nothing would name that object, so once the PubAck says
duplicate and the MAIL stream no longer holds the original, the transaction removes the
object it wrote (one it found and reused belongs to the original, and stays).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import msgspec
import nats.js.errors
import structlog
from nats.js.api import PubAck

from runtime import bodystore, bus
from schemas import mail

log = structlog.get_logger("ingress.storing")

_BYTES_PER_S = 2 * 1024 * 1024
"""The object-store deadline grows with the body at this (pessimistic) rate. The ingress's
deadlines are its client's (``ingress.publish_timeout_s`` plus this), not
``conn.deadlines``: a client waits for the reply, and a late one gets ``451`` and retries."""


CLEANUP_TIMEOUT_S = 1.0
"""Budget of each step of removing a body a retry stored again (`_unless_original_queued`):
the client waits for its ``250`` meanwhile, and what does not finish is the sweep's."""


class PublishFailed(Exception):
    """The mail could not be persisted in time; nothing may be promised to the client."""


def _sha256_hex(digest: str | None) -> str:
    """``SHA-256=<base64url>`` (the object store's form) -> lower-case hex."""
    if not digest:
        return ""
    _, _, encoded = digest.partition("=")
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()


async def _store_body(conn: bus.Conn, name: str, message: bytes
                      ) -> tuple[mail.BodyRef, str | None]:
    """The reference to the body's object, and the nuid of its chunks when this call
    wrote it (None: an earlier try's object was reused)."""
    store = await bus.bodies(conn)
    try:
        info = await store.get_info(name)
    except nats.js.errors.NotFoundError:
        pass
    else:
        if info.size is not None and info.digest:
            log.debug("ingress.body_reused", size=info.size)
            return mail.BodyRef(name=name, size=info.size,
                                sha256=_sha256_hex(info.digest)), None
    written = await store.put(name, message)
    return mail.BodyRef(name=name, size=len(message),
                        sha256=hashlib.sha256(message).hexdigest()), written.nuid


async def _unless_original_queued(conn: bus.Conn, ack: PubAck, name: str, nuid: str) -> None:
    """The envelope was a duplicate of MAIL message ``ack.seq``: while the stream holds
    it, it names the object; once it is gone (delivered, dead, purged), remove what this
    transaction wrote. A failure leaves the object to the dispatchers' sweep."""
    try:
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await conn.js.get_msg(conn.names.mail_stream, ack.seq)
            return
        except nats.js.errors.NotFoundError:
            pass
        async with asyncio.timeout(CLEANUP_TIMEOUT_S):
            await bodystore.purge(conn, await bus.bodies(conn), name, nuid)
        log.info("ingress.body_removed", reason="the original was already finished")
    except bus.TRANSIENT as exc:
        log.warning("ingress.body_left", error=str(exc) or type(exc).__name__)


async def publish(
    conn: bus.Conn,
    envelope: mail.Envelope,
    message: bytes,
    *,
    inline_limit: int,
    timeout_s: float,
    binary: bool = True,
) -> PubAck:
    """Store ``message`` with ``envelope`` (whose body fields are unset), in the binary
    form unless ``binary`` is off (`schemas.mail`); the PubAck."""
    subject = conn.names.mail_subject(envelope.upstream, envelope.policy)
    headers = {"Nats-Msg-Id": envelope.id}
    try:
        payload = b""
        written: str | None = None
        if len(message) <= inline_limit:
            payload = mail.encode_envelope(msgspec.structs.replace(envelope, body=message),
                                           binary=binary)
        if not payload or len(payload) > conn.nc.max_payload:
            async with asyncio.timeout(timeout_s + len(message) / _BYTES_PER_S):
                ref, written = await _store_body(conn, envelope.id, message)
            payload = mail.encode_envelope(msgspec.structs.replace(envelope, body_ref=ref),
                                           binary=binary)
        async with asyncio.timeout(timeout_s):
            ack = await conn.js.publish(subject, payload, timeout=timeout_s, headers=headers)
    except bus.TRANSIENT as exc:
        raise PublishFailed(str(exc) or type(exc).__name__) from exc
    if ack.duplicate and written:
        await _unless_original_queued(conn, ack, envelope.id, written)
    return ack
