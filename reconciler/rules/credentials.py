"""What the snapshot takes from Secrets and ConfigMaps: a policy's login and an upstream's
CA bundle, each with its CREDENTIALS bucket key (DESIGN.md "Resources").

- A Secret in another namespace is used only when its annotation
  ``podpost.dev/allowed-namespaces`` lists the policy's namespace (comma-separated, ``*``
  for any). Each referenced Secret becomes one CREDENTIALS key; the snapshot only names it.
- An SMTPServer's ``tlsCA`` (a ConfigMap or Secret key of its own namespace, holding PEM)
  becomes one CREDENTIALS key named by the bundle's hash (``ca.<hash>``).

What cannot be read raises `Unresolved` with the Ready condition's reason; the builder
(`reconciler.rules.building`) turns it into the object's status. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from reconciler.rules import inputs
from schemas import names, resources, snapshot

ALLOWED_NAMESPACES_ANNOTATION = "podpost.dev/allowed-namespaces"


def credentials_key(secret_key: str) -> str:
    """The CREDENTIALS bucket key of the Secret ``ns/name``."""
    return names.key_ident(secret_key)


class Unresolved(Exception):
    """A policy that cannot go into the snapshot, with the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def ca_key(pem: str) -> str:
    """The CREDENTIALS key of a CA bundle: its hash. A login's key never holds a dot."""
    return "ca." + hashlib.sha256(pem.encode()).hexdigest()[:32]


def server_ca(
    server: resources.SMTPServer,
    secrets: dict[str, resources.Secret],
    config_maps: dict[str, resources.ConfigMap],
) -> tuple[str, snapshot.TrustedCA] | None:
    """The server's ``tlsCA`` bundle and its key; `Unresolved` when it cannot be read."""
    source = server.spec.tls_ca
    if source is None:
        return None
    cm_ref, secret_ref = source.config_map_key_ref, source.secret_key_ref
    if (cm_ref is None) == (secret_ref is None):
        raise Unresolved("InvalidCA", "spec.tlsCA needs exactly one of configMapKeyRef "
                         "or secretKeyRef")
    namespace = server.metadata.namespace
    pem: str | None
    if cm_ref is not None:
        where = f"ConfigMap {namespace}/{cm_ref.name}"
        config_map = config_maps.get(f"{namespace}/{cm_ref.name}")
        if config_map is None:
            raise Unresolved("CANotFound", f"{where} not found")
        pem, key = config_map.data.get(cm_ref.key), cm_ref.key
    else:
        assert secret_ref is not None
        where = f"Secret {namespace}/{secret_ref.name}"
        secret = secrets.get(f"{namespace}/{secret_ref.name}")
        if secret is None:
            raise Unresolved("CANotFound", f"{where} not found")
        pem, key = _secret_value(secret, secret_ref.key), secret_ref.key
    if pem is None:
        raise Unresolved("CANotFound", f"{where} has no key {key!r}")
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise Unresolved("InvalidCA", f"{where}: {key!r} holds no PEM certificate")
    return ca_key(pem), snapshot.TrustedCA(pem=pem)




def _allowed_namespaces(secret: resources.Secret) -> set[str]:
    raw = secret.metadata.annotations.get(ALLOWED_NAMESPACES_ANNOTATION, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _secret_value(secret: resources.Secret, field: str) -> str | None:
    """``stringData`` wins over ``data``, as when the API server merges them."""
    if field in secret.string_data:
        return secret.string_data[field]
    if field not in secret.data:
        return None
    try:
        return base64.b64decode(secret.data[field], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Unresolved(
            "SecretInvalid", f"Secret {inputs.resource_key(secret.metadata)}: data.{field} is not "
            "base64 of UTF-8 text",
        ) from exc


def secret_credentials(secret: resources.Secret) -> snapshot.Credentials:
    """The login a Secret holds; `Unresolved` (SecretInvalid) when it lacks one."""
    key = inputs.resource_key(secret.metadata)
    username = _secret_value(secret, "username")
    password = _secret_value(secret, "password")
    missing = [f for f, v in (("username", username), ("password", password)) if not v]
    if username is None or password is None or missing:
        raise Unresolved("SecretInvalid", f"Secret {key} has no {' and no '.join(missing)}")
    return snapshot.Credentials(username=username, password=password)


def policy_login(
    policy: resources.EmailPolicy,
    ref: resources.ObjectRef,
    secrets: dict[str, resources.Secret],
) -> tuple[str, snapshot.Credentials]:
    namespace = policy.metadata.namespace
    secret_key = f"{ref.namespace or namespace}/{ref.name}"
    secret = secrets.get(secret_key)
    if secret is None:
        raise Unresolved("SecretNotFound", f"Secret {secret_key} not found")
    if secret.metadata.namespace != namespace:
        allowed = _allowed_namespaces(secret)
        if "*" not in allowed and namespace not in allowed:
            raise Unresolved(
                "CrossNamespaceSecretNotGranted",
                f"Secret {secret_key} is in another namespace; it must carry the annotation "
                f"{ALLOWED_NAMESPACES_ANNOTATION} listing {namespace!r} (or '*')",
            )
    return credentials_key(secret_key), secret_credentials(secret)
