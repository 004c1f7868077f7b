"""The shared id validators (warmer/ids.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer import ids

IMAGE_ID = "4f3c7b8e-1d2a-4c5b-9e6f-0a1b2c3d4e5f"


def test_a_canonical_uuid_is_returned_as_it_is() -> None:
    assert ids.canonical_image_id(IMAGE_ID) == IMAGE_ID
    assert ids.is_canonical_image_id(IMAGE_ID)


@pytest.mark.parametrize("value", [
    f"volume-{IMAGE_ID}", f"warmer-tmp.{IMAGE_ID}", "a..b", "{" + IMAGE_ID + "}",
    IMAGE_ID.replace("-", ""), IMAGE_ID.upper(), f"urn:uuid:{IMAGE_ID}", IMAGE_ID + "\n",
    "", None, 7, ["x"], "x" * 100_000, IMAGE_ID[:8] + "-" + IMAGE_ID[9:] + "-",
])
def test_anything_else_is_refused_with_a_bounded_message(value: Any) -> None:
    with pytest.raises(ids.InvalidId) as info:
        ids.canonical_image_id(value)
    assert len(str(info.value)) < 200
    assert not ids.is_canonical_image_id(value)


@given(st.uuids())
def test_every_uuid_in_canonical_form_is_accepted(value: uuid.UUID) -> None:
    assert ids.canonical_image_id(str(value)) == str(value)


@given(st.text(max_size=40))
def test_only_exact_canonical_forms_pass(value: str) -> None:
    try:
        accepted = ids.canonical_image_id(value)
    except ids.InvalidId:
        return
    assert accepted == str(uuid.UUID(value))


@pytest.mark.parametrize("value", ["vol-1", "a:b.c_d-e".replace("_", "-"), "v" * 255])
def test_bounded_tokens(value: str) -> None:
    assert ids.bounded_token(value, "volume_id") == value


@pytest.mark.parametrize("value", ["v" * 256, "vol\n", "", "-v", "v 1", "v/1", None, 3])
def test_bounded_tokens_refused(value: Any) -> None:
    with pytest.raises(ids.InvalidId, match="volume_id"):
        ids.bounded_token(value, "volume_id")
