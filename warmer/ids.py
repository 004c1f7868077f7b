"""The ids warmer accepts from outside: notifications, Glance, the admin API.

An image id is what Glance makes it: a canonical UUID, lowercase hex in
8-4-4-4-12 groups, exactly ``str(uuid.UUID(value))``. warmer names RBD
images and Glance locations after it, so anything else (``volume-<uuid>``,
``warmer-tmp.<uuid>``, braces, upper case, no dashes, ``a..b``) is
refused: it could name an RBD image that is not an image copy, or no
Glance image at all.

Other ids (volume ids, message ids) are only compared and remembered:
they may be any short printable token, but are bounded in length so that
what warmer remembers of them stays bounded too.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

MAX_ID_LEN = 255
_CANONICAL_LEN = 36
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


class InvalidId(ValueError):
    """A value that is not an acceptable id. Its message quotes at most the
    first 64 characters of the value."""


def canonical_image_id(value: Any, what: str = "image id") -> str:
    """Return ``value`` if it is a canonical UUID string, else raise
    :class:`InvalidId`. Never normalises: ``{...}``, upper case or a UUID
    without dashes is refused, not repaired."""
    if not isinstance(value, str) or not value:
        raise InvalidId(f"{what} is missing or not a string")
    if len(value) != _CANONICAL_LEN:
        raise InvalidId(f"{what} {_quote(value)} is not a canonical UUID")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise InvalidId(f"{what} {_quote(value)} is not a canonical UUID") from None
    if canonical != value:
        raise InvalidId(f"{what} {_quote(value)} is not a canonical UUID")
    return value


def is_canonical_image_id(value: Any) -> bool:
    try:
        canonical_image_id(value)
    except InvalidId:
        return False
    return True


def bounded_token(value: Any, what: str, max_len: int = MAX_ID_LEN) -> str:
    """Return ``value`` if it is a non-empty token of letters, digits and
    ``._:-`` (not starting with punctuation) of at most ``max_len``
    characters, else raise :class:`InvalidId`."""
    if not isinstance(value, str) or not value:
        raise InvalidId(f"{what} is missing or not a string")
    if len(value) > max_len or not _TOKEN.fullmatch(value):
        raise InvalidId(f"{what} {_quote(value)} is not a valid id")
    return value


def _quote(value: str) -> str:
    return repr(value[:64]) + ("..." if len(value) > 64 else "")
