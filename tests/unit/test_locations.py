from __future__ import annotations

import pytest

from warmer.locations import RbdLocation, parse_rbd_url


def test_well_formed_rbd_url() -> None:
    loc = parse_rbd_url("rbd://fsid-1/images/abc/snap")
    assert loc == RbdLocation("fsid-1", "images", "abc", "snap")


def test_parts_are_unquoted_and_url_round_trips() -> None:
    loc = parse_rbd_url("rbd://f/my%2Fpool/img%20x/s")
    assert loc == RbdLocation("f", "my/pool", "img x", "s")
    assert loc is not None and parse_rbd_url(loc.url) == loc


@pytest.mark.parametrize("url", [
    "file:///var/lib/glance/images/abc", "rbd://fsid/images/abc", "rbd://fsid/images/abc/",
    "rbd://fsid//abc/snap", "rbd://fsid/images/abc/snap/extra", "swift://x/y/z/w", "",
])
def test_anything_else_is_not_cloneable(url: str) -> None:
    assert parse_rbd_url(url) is None
