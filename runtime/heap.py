"""Python's garbage collector for a long-running role: the start-up heap frozen.

Once a role has started (modules, settings, the snapshot, its connections), what is alive
then lives as long as the process. `settle` collects once and freezes what survived
(``gc.freeze``): the collector's full collections then walk only what the role made since,
not the whole program (each a pause of tens of milliseconds in the ingress otherwise).
"""

from __future__ import annotations

import gc


def settle(*, freeze: bool, threshold0: int | None = None) -> None:
    """Collect once and freeze the survivors (``freeze``); ``threshold0`` sets the
    allocations between two young collections (None: leave it)."""
    if threshold0 is not None:
        gc.set_threshold(threshold0, *gc.get_threshold()[1:])
    if freeze:
        gc.collect()
        gc.freeze()
