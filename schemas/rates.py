"""The per-policy rate-limit counters in the RATES bucket: their key layout and value.

Dispatchers count each policy's messages in fixed windows aligned to the epoch (a
minute window starts on a whole minute), one key per policy and window:
``<namespace>.<name>.<window start in epoch milliseconds>`` (the policy key as two subject
tokens, `names.key_token`). The value says which window it counts, so a reader such as
``podpost status`` needs neither the dispatchers' settings nor their clock. Keys are
written with compare-and-swap only; the bucket's TTL removes old windows.

A window holds two counts. ``used`` is what the limit is enforced on: every token granted,
including those of a fetch still waiting for mail (a reservation that may come back).
``sent`` counts only the tokens that found a message, so it is what a reader shows as the
policy's use: an idle dispatcher's reservation is never reported as mail sent.
"""

from __future__ import annotations

import msgspec

from schemas import names


class RateWindow(msgspec.Struct, frozen=True, kw_only=True):
    """How many messages of ``policy`` were granted in one window."""

    policy: str
    """``<namespace>/<name>`` of the EmailPolicy."""
    start_ms: int
    """Window start, epoch milliseconds."""
    period_ms: int
    """Window length in milliseconds (the policy's period times the dispatchers'
    ``rate_window_scale``)."""
    maximum: int
    """The policy's limit when the window was last written."""
    used: int = 0
    """Messages granted in this window, refunds deducted: what the maximum limits. It
    includes the tokens of fetches that are still waiting for mail."""
    sent: int = 0
    """Messages fetched to be sent in this window: the grants that found a message, added
    as each fetch is settled; never more than ``used``. What ``podpost status`` shows.
    Written by dispatchers that know it (older ones leave it 0)."""

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.period_ms


window_encoder = msgspec.json.Encoder()
window_decoder = msgspec.json.Decoder(RateWindow)


def window_key(policy: str, start_ms: int) -> str:
    """``ns/my.name`` at ``start_ms`` -> ``ns.my_name.<start_ms>``."""
    return f"{names.key_token(policy)}.{start_ms}"


def parse_window_key(key: str) -> tuple[str, int]:
    """The inverse of `window_key`: (policy key, window start in epoch ms)."""
    parts = key.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        raise names.InvalidKey(f"not a rate window key: {key!r}")
    return names.token_key(f"{parts[0]}.{parts[1]}"), int(parts[2])


def current(windows: list[RateWindow], now_ms: int) -> dict[str, RateWindow]:
    """Per policy, the stored window that contains ``now_ms`` (policies whose current
    window has no key yet have used nothing in it and are absent)."""
    out: dict[str, RateWindow] = {}
    for window in windows:
        if window.start_ms <= now_ms < window.end_ms:
            seen = out.get(window.policy)
            if seen is None or window.start_ms > seen.start_ms:
                out[window.policy] = window
    return out


# --- provider quotas ----------------------------------------------------------------------

QUOTA = "quota."
"""The key prefix of quota windows in the RATES bucket: ``quota.<upstream token>.<account
id>.<period>.<window start ms>`` (six tokens, so never a policy window's three)."""


class QuotaWindow(msgspec.Struct, frozen=True, kw_only=True):
    """How much of a provider account's quota one calendar window has used: the
    account is ``upstream`` with the login ``credentials`` (a CREDENTIALS key, "" for
    none). Written by dispatchers with compare-and-swap, read by ``podpost status``."""

    upstream: str
    credentials: str = ""
    account: str
    """`dispatcher.rules.quotas.account` of (upstream, credentials)."""
    period: str
    count: str = "messages"
    start_ms: int
    end_ms: int
    maximum: int
    used: int = 0
    """Messages or recipients taken in this window, refunds deducted."""


quota_encoder = msgspec.json.Encoder()
quota_decoder = msgspec.json.Decoder(QuotaWindow)


def quota_key(upstream: str, account: str, period: str, start_ms: int) -> str:
    return f"{QUOTA}{names.key_token(upstream)}.{account}.{period}.{start_ms}"


def current_quotas(windows: list[QuotaWindow], now_ms: int) -> list[QuotaWindow]:
    """The stored windows that hold ``now_ms``, one per (account, period), sorted."""
    out: dict[tuple[str, str], QuotaWindow] = {}
    for w in windows:
        if w.start_ms <= now_ms < w.end_ms:
            out[(w.account, w.period)] = w
    return sorted(out.values(), key=lambda w: (w.upstream, w.credentials, w.period))
