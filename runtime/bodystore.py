"""The BODIES object store's layout, and removing an object without a trace.

Two roles remove bodies: the dispatcher once a mail is delivered (and its sweep, the
residue), and the ingress when a retried transaction stored an object again for a mail
JetStream already had and has since finished (`ingress.storing`). Both purge the object's
meta subject and then its chunk subject: ``ObjectStore.delete`` would leave a delete marker
per object until the store's TTL.
"""

from __future__ import annotations

import asyncio
import base64

import nats.js.errors
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

from runtime import bus


def stream(conn: bus.Conn) -> str:
    return OBJ_STREAM_TEMPLATE.format(bucket=conn.names.bodies_bucket)


def meta_subject(conn: bus.Conn, name: str) -> str:
    """The subject of an object's meta message (nats-py's layout: base64url of the name)."""
    encoded = base64.urlsafe_b64encode(name.encode()).decode()
    return OBJ_META_PRE_TEMPLATE.format(bucket=conn.names.bodies_bucket, obj=encoded)


def chunks_subject(conn: bus.Conn, nuid: str) -> str:
    return OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=conn.names.bodies_bucket, obj=nuid)


async def purge_chunks(conn: bus.Conn, nuid: str) -> None:
    async with asyncio.timeout(conn.deadlines.api_s):
        await conn.js.purge_stream(stream(conn), subject=chunks_subject(conn, nuid))


async def purge(conn: bus.Conn, store: ObjectStore, name: str, nuid: str | None = None
                ) -> None:
    """Remove an object: its meta first (so no reader finds a body whose chunks are
    going), then its chunks (those of ``nuid``, or of the meta found). Gone already:
    nothing to do."""
    if nuid is None:
        try:
            async with asyncio.timeout(conn.deadlines.api_s):
                info = await store.get_info(name, show_deleted=True)
        except nats.js.errors.NotFoundError:
            return
        nuid = info.nuid
    async with asyncio.timeout(conn.deadlines.api_s):
        await conn.js.purge_stream(stream(conn), subject=meta_subject(conn, name))
    if nuid:
        await purge_chunks(conn, nuid)
