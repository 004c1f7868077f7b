"""Glance image locations and the ``rbd://`` URLs Cinder can clone from."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

RBD_PREFIX = "rbd://"


@dataclass(frozen=True)
class RbdLocation:
    fsid: str
    pool: str
    image: str
    snapshot: str

    @property
    def url(self) -> str:
        parts = (self.fsid, self.pool, self.image, self.snapshot)
        return RBD_PREFIX + "/".join(urllib.parse.quote(p, safe="") for p in parts)

    def __str__(self) -> str:
        return f"{self.pool}/{self.image}@{self.snapshot} (fsid {self.fsid})"


@dataclass(frozen=True)
class Location:
    url: str
    store: str | None = None


def parse_rbd_url(url: str) -> RbdLocation | None:
    """Parse a location the way Cinder's RBD driver does before cloning:
    ``rbd://<fsid>/<pool>/<image>/<snapshot>``, exactly four non-empty,
    URL-quoted parts. Anything else is not cloneable and yields ``None``."""
    if not url.startswith(RBD_PREFIX):
        return None
    pieces = [urllib.parse.unquote(p) for p in url[len(RBD_PREFIX):].split("/")]
    if len(pieces) != 4 or any(p == "" for p in pieces):
        return None
    return RbdLocation(*pieces)
