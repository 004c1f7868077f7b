"""Image ids: Glance gives every image a canonical UUID, and so does warmer.

Every id that reaches warmer (a notification, the admin API, the CLI, an
RBD image name) is checked here. Anything that is not exactly the canonical
form (lowercase, 8-4-4-4-12) is refused: ``volume-<uuid>``,
``warmer-tmp.<uuid>``, ``a..b``, braces, upper case. An id that passes can
be put in an RBD image name or a RADOS object name without escaping.
"""

from __future__ import annotations

import re

_CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def canonical_image_id(value: object) -> str:
    """Return ``value`` if it is a canonical UUID string; raise ValueError."""
    if not isinstance(value, str) or not _CANONICAL.match(value):
        shown = value[:64] if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{shown!r} is not a canonical image id (a lowercase UUID)")
    return value


def is_canonical_image_id(value: object) -> bool:
    return isinstance(value, str) and bool(_CANONICAL.match(value))
