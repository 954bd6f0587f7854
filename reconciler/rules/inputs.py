"""What the snapshot builder takes: the resources of one source and the endpoints that
send mail. The file source (`reconciler.rules.documents`) and the Kubernetes source
(`reconciler.rules.inventory`, `reconciler.rules.kubeobjects`) each produce these, and
`reconciler.rules.building` turns them into a snapshot; the types live apart from the build
so the producers need not import it.

Pure data.
"""

from __future__ import annotations

import msgspec

from schemas import resources


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Something that sends mail from known addresses: a pod or a static source."""

    source: str
    """``pod:<ns>/<name>`` or ``static:<ns>/<name>``."""
    namespace: str
    labels: dict[str, str]
    networks: list[str]
    """Pod IPs (v4/v6) or static CIDRs."""


class Inputs(msgspec.Struct, frozen=True, kw_only=True):
    servers: list[resources.SMTPServer] = []
    policies: list[resources.EmailPolicy] = []
    secrets: list[resources.Secret] = []
    config_maps: list[resources.ConfigMap] = []
    endpoints: list[Endpoint] = []


def resource_key(metadata: resources.Metadata) -> str:
    """An object's key in every input, snapshot and condition: ``<namespace>/<name>``."""
    return f"{metadata.namespace}/{metadata.name}"
