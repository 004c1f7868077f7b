"""The interface of warmer's shared state, and the values it holds.

What every daemon of a fleet shares (issue 7):

* **demand**: per image, the decayed sum of the demand events each daemon
  counted. Each daemon writes only its own *shard*; the demand of an image
  is the sum over all shards (:class:`DemandTotals`);
* **pins** set through warmer, with who set them and when (:class:`Pin`);
* **tombstones**: images Glance deleted, with when (:class:`Tombstone`);
* **copy costs**: per target and image, the bytes a copy read and wrote,
  the seconds it took, when and by which daemon, and how it was checked
  (:class:`CopyCost`);
* **verified snapshots**: source RBD snapshots whose every byte warmer
  hashed and matched against Glance's digest (:class:`VerifiedSnapshot`):
  a later copy of the same snapshot needs no hash.

Values are small JSON documents with ``to_json``/``from_json``, as
ceph-mgr's rbd_support keeps its schedules and tasks; ``from_json`` raises
``ValueError`` on anything it cannot read, and readers skip (and log) such
values rather than fail. Keys are canonical image ids.

Demand arithmetic. An event of weight ``w`` at time ``t`` is worth
``w * 2**((now - t) / -h)`` at time ``now`` (``h``: the half-life). A shard
keeps, per image, a :class:`Contribution`: ``value = sum(w * 2**((t - e) /
h))`` over the events it folded, relative to an *epoch* ``e`` (unix
seconds) that the value records itself. Then

    score(now) = sum over shards of value * 2**((e - now) / h)

which is a plain sum: it does not depend on which daemon counted which
event, nor on the order. Each daemon moves its own epoch forward ("re-base")
before ``(t - e) / h`` could grow past :data:`REBASE_AFTER`; it needs no
agreement with the others, because every value says which epoch it is
relative to, and a reader scales each one by ``2**((e - E) / h)`` into
the epoch ``E`` of its totals. Scaling is exact up to float rounding: a
few ulps, far below 1e-9 relative.

All daemons must use the same half-life: :meth:`StateStore.settings` records
the first one and returns it to every later daemon.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# A daemon re-bases its epoch before an event would count more than 2**256
# times its weight: values then stay far below the float range (2**1024),
# whatever the age of the epoch they are read from.
REBASE_AFTER = 256.0
# Exponents are capped here, so that nothing raises OverflowError, whatever
# clocks and timestamps say.
_MAX_EXPONENT = 1000.0
_MAX_EPOCH = 2 ** 53  # unix seconds; any float arithmetic on it stays exact

_COMPACT = (",", ":")


class StateError(Exception):
    """The state could not be read or written."""


class StateUnavailable(StateError):
    """The store cannot be reached now; the same call may succeed later."""


class ShardLost(StateError):
    """Another process claimed this daemon's demand shard (a restart under
    the same name, or two daemons configured with the same name), and the
    write was refused. A write that goes in several steps may have been
    refused part-way: ``applied`` names the keys that were written (or
    deleted) before the refusal; nothing else was."""

    def __init__(self, message: str, applied: Collection[str] = ()) -> None:
        super().__init__(message)
        self.applied = frozenset(applied)


def pow2(exponent: float) -> float:
    """``2 ** exponent``, saturating instead of raising on overflow."""
    return math.pow(2.0, min(exponent, _MAX_EXPONENT))


def _load(raw: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _number(doc: dict[str, Any], key: str, *, minimum: float = 0.0) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} is missing or not a number")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{key!r} is out of range") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{key!r} is out of range: {value!r}")
    return value


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value


def _count(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key!r} is missing or not a non-negative integer")
    return value


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=_COMPACT, allow_nan=False).encode()


# -- values ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contribution:
    """One daemon's demand for one image: ``value`` is relative to ``epoch``
    (unix seconds). JSON: ``{"v": 3.5, "e": 1764000000}``."""

    value: float
    epoch: int

    def to_json(self) -> bytes:
        return _dumps({"v": self.value, "e": self.epoch})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Contribution:
        doc = _load(raw)
        epoch = doc.get("e")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or abs(epoch) >= _MAX_EPOCH:
            raise ValueError("'e' is missing, not an integer, or out of range")
        return cls(_number(doc, "v"), epoch)

    def relative_to(self, epoch: int, half_life: float) -> float:
        """The same demand, as a value relative to another epoch."""
        if epoch == self.epoch:
            return self.value
        return self.value * pow2((self.epoch - epoch) / half_life)

    def score(self, now: float, half_life: float) -> float:
        return self.value * pow2((self.epoch - now) / half_life)


@dataclass(frozen=True)
class Pin:
    """An image pinned warm through warmer (the admin API or CLI), not by an
    image property or tag. JSON: ``{"by": ..., "at": ..., "reason": ...}``."""

    image_id: str
    by: str
    at: float
    reason: str = ""

    def to_json(self) -> bytes:
        return _dumps({"by": self.by, "at": self.at, "reason": self.reason})

    @classmethod
    def from_json(cls, image_id: str, raw: bytes | str) -> Pin:
        doc = _load(raw)
        return cls(image_id, _text(doc, "by"), _number(doc, "at"), _text(doc, "reason"))


@dataclass(frozen=True)
class Tombstone:
    """Glance deleted ``image_id`` at ``at``; ``by`` is the daemon that saw
    it. JSON: ``{"at": ..., "by": ...}``."""

    image_id: str
    at: float
    by: str = ""

    def to_json(self) -> bytes:
        return _dumps({"at": self.at, "by": self.by})

    @classmethod
    def from_json(cls, image_id: str, raw: bytes | str) -> Tombstone:
        doc = _load(raw)
        return cls(image_id, _number(doc, "at"), _text(doc, "by"))


@dataclass(frozen=True)
class CopyCost:
    """What copying ``image_id`` into ``target`` cost: ``copied_bytes``
    written, ``read_bytes`` read from the source (holes it knew of are not
    read), ``seconds`` taken, recorded at ``at`` by daemon ``by``. ``digest``
    is what the copy is known to match (``algorithm:hex``), and ``check``
    how: ``verified`` (hashed), ``skipped_verified`` (its source snapshot was
    verified before: :class:`VerifiedSnapshot`) or ``unverified``.
    ``fanout`` is the number of targets written from that one read (its
    ``read_bytes`` are shared by them, not read once each). JSON:
    ``{"bytes": ..., "read": ..., "seconds": ..., "digest": ..., "check": ...,
    "at": ..., "by": ..., "fanout": ...}``; ``read``, ``check``, ``by`` and
    ``fanout`` may be absent (records written before they existed; no
    ``fanout`` is 1)."""

    target: str
    image_id: str
    copied_bytes: int
    seconds: float
    digest: str
    at: float
    read_bytes: int = 0
    check: str = ""
    by: str = ""
    fanout: int = 1

    def to_json(self) -> bytes:
        return _dumps({"bytes": self.copied_bytes, "read": self.read_bytes,
                       "seconds": self.seconds, "digest": self.digest, "check": self.check,
                       "at": self.at, "by": self.by, "fanout": self.fanout})

    @classmethod
    def from_json(cls, target: str, image_id: str, raw: bytes | str) -> CopyCost:
        doc = _load(raw)
        return cls(target, image_id, _count(doc, "bytes"), _number(doc, "seconds"),
                   _text(doc, "digest"), _number(doc, "at"),
                   _count(doc, "read") if "read" in doc else 0, _text(doc, "check"),
                   _text(doc, "by"), _count(doc, "fanout") if "fanout" in doc else 1)

    def view(self) -> dict[str, Any]:
        """For the admin API."""
        return {"written_bytes": self.copied_bytes, "read_bytes": self.read_bytes,
                "seconds": self.seconds, "digest": self.digest, "check": self.check,
                "at": self.at, "by": self.by, "fanout": self.fanout}


@dataclass(frozen=True)
class SourceSnapshot:
    """The RBD snapshot a copy of Glance image ``image_id`` reads, named by
    what cannot change under that name: the cluster (``fsid``), the pool,
    the RBD image (``image``, its name, and ``rbd_id``, the id RBD gave it
    at creation, which an image re-created under the same name does not
    have) and the snapshot's id (``snap_id``: RBD never gives one to two
    snapshots of an image, so a snapshot removed and re-created under the
    same name has a new one). A snapshot's data never changes."""

    image_id: str
    fsid: str
    pool: str
    image: str
    snap_id: int
    rbd_id: str = ""

    @property
    def key(self) -> str:
        """``<image id>/<fsid>/<pool>/<image>@<snap id>``: Glance's image id
        first, so that an image's records are found (and removed) by prefix."""
        return f"{self.location_prefix}{self.snap_id}"

    @property
    def location_prefix(self) -> str:
        """The key of any snapshot of the same RBD image, up to the snap id."""
        return f"{self.image_id}/{self.fsid}/{self.pool}/{self.image}@"


@dataclass(frozen=True)
class VerifiedSnapshot:
    """warmer read every byte of ``snapshot``, and their ``digest``
    (``algorithm:hex``, over ``size`` bytes) matched what Glance records for
    the image, at ``at``, on daemon ``by``. A later copy of the same
    snapshot, while Glance records the same digest, needs no hash of its
    own (:meth:`vouches_for`). Written only after a match.

    ``mismatched`` says the opposite: a copy of the snapshot once read
    bytes that did not match Glance's digest (``digest`` is then what they
    hashed to, never Glance's). Such a record is kept apart
    (:meth:`StateStore.put_mismatched`) and vouches for nothing, ever: no
    daemon trusts the snapshot again, whatever verified record appears.

    JSON, under :attr:`SourceSnapshot.key`: ``{"fsid": ..., "pool": ...,
    "image": ..., "snap_id": ..., "rbd_id": ..., "digest": ..., "size": ...,
    "at": ..., "by": ...}``, plus ``"mismatched": true`` when it is."""

    snapshot: SourceSnapshot
    digest: str
    size: int
    at: float
    by: str = ""
    mismatched: bool = False

    def vouches_for(self, snapshot: SourceSnapshot, digest: str, size: int) -> bool:
        """Whether this record makes hashing ``snapshot`` again useless: the
        same snapshot (every part of its identity), the same size, and the
        digest Glance records now; never a mismatch."""
        return (not self.mismatched and self.snapshot == snapshot and self.size == size
                and bool(digest) and self.digest == digest.lower())

    def to_json(self) -> bytes:
        s = self.snapshot
        doc: dict[str, Any] = {
            "fsid": s.fsid, "pool": s.pool, "image": s.image, "snap_id": s.snap_id,
            "rbd_id": s.rbd_id, "digest": self.digest, "size": self.size, "at": self.at,
            "by": self.by}
        if self.mismatched:
            doc["mismatched"] = True
        return _dumps(doc)

    @classmethod
    def from_json(cls, key: str, raw: bytes | str) -> VerifiedSnapshot:
        """Raises ``ValueError`` unless the value names the snapshot its
        ``key`` names."""
        doc = _load(raw)
        image_id = key.split("/", 1)[0]
        snapshot = SourceSnapshot(image_id, _text(doc, "fsid"), _text(doc, "pool"),
                                  _text(doc, "image"), _count(doc, "snap_id"),
                                  _text(doc, "rbd_id"))
        if snapshot.key != key:
            raise ValueError(f"the value names {snapshot.key!r}, not its key")
        digest = _text(doc, "digest")
        if ":" not in digest:
            raise ValueError("'digest' is not algorithm:hex")
        mismatched = doc.get("mismatched", False)
        if not isinstance(mismatched, bool):
            raise ValueError("'mismatched' is not a boolean")
        return cls(snapshot, digest, _count(doc, "size"), _number(doc, "at"), _text(doc, "by"),
                   mismatched)


@dataclass(frozen=True)
class ShardInfo:
    """A daemon's demand shard, as the directory lists it: the process
    (``instance``) that claimed it last, and when."""

    daemon: str
    instance: str
    since: float

    def to_json(self) -> bytes:
        return _dumps({"instance": self.instance, "since": self.since})

    @classmethod
    def from_json(cls, daemon: str, raw: bytes | str) -> ShardInfo:
        doc = _load(raw)
        return cls(daemon, _text(doc, "instance"), _number(doc, "since"))


@dataclass(frozen=True)
class Settings:
    """What all daemons sharing the state must agree on, recorded once by
    the first of them. JSON: ``{"half_life": ..., "since": ...}``."""

    half_life: float
    since: float

    def to_json(self) -> bytes:
        return _dumps({"half_life": self.half_life, "since": self.since})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Settings:
        doc = _load(raw)
        half_life = _number(doc, "half_life")
        if half_life <= 0:
            raise ValueError("'half_life' must be positive")
        return cls(half_life, _number(doc, "since"))


# -- totals --------------------------------------------------------------------------


class DemandTotals:
    """The demand of many images, summed over shards.

    Values are kept relative to one epoch, the newest of the contributions
    added so far: when a newer one arrives, what is already summed is scaled
    down to it, so nothing is ever scaled up towards overflow. Relative to a
    fixed epoch, values rank images the same at every instant, so a caller
    may sort them once.
    """

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self.epoch: int | None = None
        self._values: dict[str, float] = {}
        self._factors: dict[int, float] = {}

    def add(self, image_id: str, contribution: Contribution) -> None:
        if self.epoch is None or contribution.epoch > self.epoch:
            self._move_to(contribution.epoch)
        factor = self._factors.get(contribution.epoch)
        if factor is None:
            assert self.epoch is not None
            factor = pow2((contribution.epoch - self.epoch) / self.half_life)
            self._factors[contribution.epoch] = factor
        self._values[image_id] = self._values.get(image_id, 0.0) + contribution.value * factor

    def add_all(self, contributions: Iterable[tuple[str, Contribution]]) -> None:
        for image_id, contribution in contributions:
            self.add(image_id, contribution)

    def _move_to(self, epoch: int) -> None:
        if self.epoch is not None and self._values:
            factor = pow2((self.epoch - epoch) / self.half_life)
            for image_id, value in self._values.items():
                self._values[image_id] = value * factor
        self.epoch = epoch
        self._factors = {epoch: 1.0}

    def value(self, image_id: str) -> float:
        """The demand of ``image_id`` relative to :attr:`epoch`."""
        return self._values.get(image_id, 0.0)

    def score(self, image_id: str, now: float) -> float:
        value = self._values.get(image_id)
        if value is None or self.epoch is None:
            return 0.0
        return value * pow2((self.epoch - now) / self.half_life)

    def scores(self, now: float) -> dict[str, float]:
        if self.epoch is None:
            return {}
        factor = pow2((self.epoch - now) / self.half_life)
        return {image_id: value * factor for image_id, value in self._values.items()}

    def image_ids(self) -> list[str]:
        return list(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._values


# -- the interface -------------------------------------------------------------------


class StateStore(Protocol):
    """warmer's shared state. Every method may raise :class:`StateUnavailable`
    (retry later) or :class:`StateError`. Writes are idempotent: repeating
    one after a timeout, whether or not it was applied, leaves the same
    state. Image ids must be canonical (``ValueError`` otherwise); daemon and
    target names are short tokens.
    """

    async def settings(self, proposed: Settings) -> Settings:
        """Record ``proposed`` unless settings are already recorded, and
        return what is recorded. Of daemons racing here, exactly one wins."""

    # demand --------------------------------------------------------------------

    async def claim_shard(self, daemon: str, instance: str) -> dict[str, Contribution]:
        """Make ``instance`` (one process of ``daemon``) the only writer of
        that daemon's shard, list the shard in the directory, and return
        the shard's content, read after the claim. Writes by an earlier
        instance fail with :class:`ShardLost` from then on."""

    async def write_shard(self, daemon: str, instance: str, put: Mapping[str, Contribution],
                          remove: Collection[str]) -> None:
        """Set ``put`` and delete ``remove`` in ``daemon``'s shard, if
        ``instance`` still holds it (else :class:`ShardLost`, whose
        ``applied`` names what was written before the refusal). A large
        write may go in several steps; a failure part-way leaves each key
        either old or new."""

    async def shards(self) -> dict[str, ShardInfo]:
        """Every shard in the directory, by daemon name."""

    async def read_demand(self, half_life: float, skip: Collection[str] = ()) -> DemandTotals:
        """Every image's demand: all of every shard, read in pages, except
        the shards of the daemons named in ``skip`` (a daemon reading what
        the others counted)."""

    async def demand_of(self, image_ids: Collection[str], half_life: float) -> DemandTotals:
        """The demand of ``image_ids`` only (absent ones have none)."""

    # pins, tombstones, copy costs ----------------------------------------------

    async def put_pin(self, pin: Pin) -> None: ...

    async def remove_pin(self, image_id: str) -> None: ...

    async def pins(self) -> dict[str, Pin]: ...

    async def put_tombstone(self, tombstone: Tombstone) -> None: ...

    async def remove_tombstones(self, image_ids: Collection[str]) -> None: ...

    async def tombstones(self) -> dict[str, Tombstone]: ...

    async def put_cost(self, cost: CopyCost) -> None: ...

    async def remove_cost(self, target: str, image_id: str) -> None: ...

    async def costs(self, target: str) -> dict[str, CopyCost]: ...

    # verified snapshots ------------------------------------------------------------

    async def verified(self, image_id: str) -> dict[str, VerifiedSnapshot]:
        """The records of Glance image ``image_id``, by key."""

    async def put_verified(self, record: VerifiedSnapshot) -> None:
        """Record ``record``, and drop the records of the other snapshots of
        the same RBD image (:attr:`SourceSnapshot.location_prefix`): a
        snapshot re-created under the same name leaves none behind."""

    async def remove_verified(self, image_ids: Collection[str]) -> None:
        """Drop every record of these Glance images (deleted)."""

    async def mismatched(self, image_id: str) -> set[str]:
        """The keys (:attr:`SourceSnapshot.key`) of the snapshots of Glance
        image ``image_id`` a copy of which once hashed to something other
        than Glance's digest. Kept apart from the verified records, so that
        no write or removal of those (by a daemon of this version or an
        earlier one) touches them. A key whose value cannot be read counts."""

    async def put_mismatched(self, record: VerifiedSnapshot) -> None:
        """Record that ``record.snapshot`` mismatched (``record.mismatched``
        is true; its digest is what the bytes hashed to)."""

    async def remove_mismatched(self, image_ids: Collection[str]) -> None:
        """Drop the mismatch records of these Glance images (deleted)."""

    async def close(self) -> None: ...
