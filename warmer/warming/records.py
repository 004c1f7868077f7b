"""What the shared state remembers about copies (docs/state.md): the source
snapshots warmer verified, and what each copy cost.

**Verify each source snapshot once.** An RBD snapshot never changes. Once
warmer has read every byte of a snapshot and their digest matched Glance's
(``os_hash_algo``/``os_hash_value``, or ``checksum``), :meth:`verified`
records that under the snapshot's identity
(:class:`~warmer.state.store.SourceSnapshot`: cluster, pool, image name and
RBD id, snapshot *id*). A later copy of that snapshot asks :meth:`trusted`
first: when the record names the same identity, size and the digest Glance
records now, the copy hashes nothing and relies on librbd's acknowledged
reads and writes, as ``rbd import`` does. A snapshot re-created under the
same name has a new id and is hashed again; so is one whose Glance digest
changed.

Never trust without the record: a state that cannot be read, or does not
answer within :data:`TIMEOUT`, means hash. A record is written only after
a match (the caller's :meth:`~warmer.warming.copy.Verifier.verify`
returned, after every byte was read); one that cannot be written means
the next copy hashes again. Nothing here raises, whatever the state
raised (:class:`StateError`, a timeout, or anything else): each failure
is logged and counted (``on_error(op, exc)``).

Records are keyed by what cannot change. A record of an older snapshot
of the same RBD image is dropped when the new one is recorded, and every
record of a Glance image goes when the image is deleted (:meth:`forget`,
from :meth:`~warmer.warming.target.Target.purge`), or as soon as any
daemon hashes a copy of it that does not match (:meth:`revoke`): a
snapshot's bytes are not supposed to change, but if they read otherwise
once, no daemon should go on trusting them. The snapshot that mismatched
is recorded apart (``warmer.mismatched``), before the verified records
go: no daemon trusts it again, after a restart too, whatever verified
record of it a later match (or a daemon of an earlier version) writes,
until the Glance image is deleted.

**What each copy cost**, per target and image: bytes read and written,
seconds, when, by which daemon, and how it was checked
(:class:`~warmer.state.store.CopyCost`), written when the copy is finished
and dropped when it is removed. The latest ones this daemon made are kept
in memory too (:meth:`last_cost`), for the admin API.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from warmer.state.store import (
    CopyCost,
    SourceSnapshot,
    StateError,
    StateStore,
    VerifiedSnapshot,
)
from warmer.warming.copy import CopyStats

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a state read or write may hold a copy up. A read that takes
# longer means hash; a write, that the next copy hashes again.
TIMEOUT = 10.0
MAX_COSTS = 10_000  # copy costs kept in memory, the latest first
MAX_DISTRUSTED = 10_000  # snapshots remembered as mismatched, the latest first


class CopyRecords:
    """One per daemon, shared by its targets. ``trust = False`` hashes every
    copy (records are still written, for daemons that trust them)."""

    def __init__(self, store: StateStore, daemon: str, *, trust: bool = True,
                 clock: Callable[[], float] = time.time,
                 on_error: Callable[[str, Exception], None] | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.store = store
        self.daemon = daemon
        self.trust = trust
        self._clock = clock
        self._on_error = on_error
        self.timeout = timeout
        self._costs: collections.OrderedDict[tuple[str, str], CopyCost] = \
            collections.OrderedDict()
        # Snapshots whose copy mismatched here: never trusted again (keys).
        self._distrusted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._unexpected: set[str] = set()  # kinds of exception logged with a traceback

    # -- verified snapshots -------------------------------------------------------

    async def trusted(self, snapshot: SourceSnapshot, digest: str, size: int) -> bool:
        """Whether ``snapshot`` was verified before against ``digest`` (what
        Glance records now) over ``size`` bytes. False whenever unsure."""
        if not self.trust or not digest or snapshot.key in self._distrusted:
            return False
        _, records = await self._call("verified",
                                      lambda: self.store.verified(snapshot.image_id))
        record = records.get(snapshot.key) if records else None
        if record is None or not record.vouches_for(snapshot, digest, size):
            return False
        # Then the mismatches, which win over any verified record. In this
        # order: :meth:`revoke` records a mismatch before it drops the
        # verified records, so a record still read here was either dropped
        # later (after its mismatch was written, so read next) or never was.
        return await self.still_trusted(snapshot)

    async def still_trusted(self, snapshot: SourceSnapshot) -> bool:
        """Whether no mismatch of ``snapshot`` is recorded: the second half
        of :meth:`trusted`, and, after an unhashed copy, its check that
        none was recorded while it ran. False when the state does not
        answer."""
        if snapshot.key in self._distrusted:
            return False
        ok, bad = await self._call("mismatched",
                                   lambda: self.store.mismatched(snapshot.image_id))
        if not ok or bad is None:
            return False
        if snapshot.key in bad:
            self._distrust(snapshot)
            return False
        return True

    async def verified(self, snapshot: SourceSnapshot, digest: str, size: int) -> None:
        """Every byte of ``snapshot`` was read and matched ``digest``. Call
        it only then: never on a mismatch, a short read or a failed read.
        (A snapshot that mismatched once is never trusted, whatever this
        writes: :meth:`trusted` reads the mismatches first.)"""
        if snapshot.key in self._distrusted:
            return  # saves a write no daemon would trust
        record = VerifiedSnapshot(snapshot, digest.lower(), size, self._clock(), self.daemon)
        ok, _ = await self._call("put_verified", lambda: self.store.put_verified(record))
        if ok:
            LOG.info("image %s: source snapshot %s recorded as verified (%s)",
                     snapshot.image_id, snapshot.key, digest)

    async def revoke(self, image_id: str, snapshot: SourceSnapshot | None,
                     read: str | None, size: int) -> None:
        """A copy of ``image_id`` hashed bytes that did not match Glance's
        digest (they hashed to ``read``, over ``size`` bytes), before the
        copy fails: record that ``snapshot`` mismatched, so that no daemon
        of this version trusts it again, after a restart too; then drop
        every verified record of the image, so that no daemon (of an earlier
        version too) trusts any of its snapshots any more (a record may
        vouch for a snapshot whose bytes now read otherwise: bit rot, a
        librbd bug, a write behind RBD's back). In that order, so that a
        failure between the two leaves the mismatch recorded. This daemon
        never trusts it again even if neither write worked."""
        ok = True
        if snapshot is not None:
            self._distrust(snapshot)
            if read:
                marker = VerifiedSnapshot(snapshot, read.lower(), size, self._clock(),
                                          self.daemon, mismatched=True)
                ok, _ = await self._call("put_mismatched",
                                         lambda: self.store.put_mismatched(marker))
        removed, _ = await self._call("remove_verified",
                                      lambda: self.store.remove_verified([image_id]))
        ok = ok and removed
        if ok:
            LOG.warning("image %s: a copy did not match Glance's digest: its verified "
                        "snapshots are forgotten, every copy hashes them again", image_id)
        else:
            LOG.error("image %s: a copy did not match Glance's digest, and its verified "
                      "snapshots could not be forgotten or marked: daemons that trust them "
                      "may copy them unhashed (this one will not)", image_id)

    def _distrust(self, snapshot: SourceSnapshot) -> None:
        self._distrusted[snapshot.key] = None
        self._distrusted.move_to_end(snapshot.key)
        while len(self._distrusted) > MAX_DISTRUSTED:
            self._distrusted.popitem(last=False)

    async def forget(self, image_id: str) -> None:
        """Glance deleted ``image_id``: drop the records of its snapshots."""
        await self._call("remove_verified", lambda: self.store.remove_verified([image_id]))
        await self._call("remove_mismatched",
                         lambda: self.store.remove_mismatched([image_id]))

    # -- copy costs -----------------------------------------------------------------

    async def copied(self, target: str, image_id: str, stats: CopyStats, digest: str,
                     check: str) -> CopyCost:
        """A finished copy: record what it cost."""
        cost = CopyCost(target, image_id, stats.written, stats.seconds, digest, self._clock(),
                        stats.read, check, self.daemon, stats.fanout)
        self._costs[(target, image_id)] = cost
        self._costs.move_to_end((target, image_id))
        while len(self._costs) > MAX_COSTS:
            self._costs.popitem(last=False)
        await self._call("put_cost", lambda: self.store.put_cost(cost))
        return cost

    async def removed(self, target: str, image_id: str) -> None:
        """The copy of ``image_id`` is out of ``target``: its cost goes."""
        self._costs.pop((target, image_id), None)
        await self._call("remove_cost", lambda: self.store.remove_cost(target, image_id))

    def last_cost(self, target: str, image_id: str) -> CopyCost | None:
        """The cost of the copy this daemon made lately, if any (memory)."""
        return self._costs.get((target, image_id))

    # -----------------------------------------------------------------------------------

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """``call()``, bounded by :attr:`timeout`: (whether it worked, its
        result). Any failure means the state is unavailable for this call,
        whatever it raised: a RuntimeError from an executor shut down under
        a stopping daemon, say, must not fail a copy that is already
        finished, nor stop a hash. Only a cancellation goes through."""
        try:
            return True, await asyncio.wait_for(call(), self.timeout)
        except Exception as exc:  # any: see above
            expected = isinstance(exc, (StateError, TimeoutError, ValueError))
            kind = type(exc).__name__
            if expected or kind in self._unexpected:
                LOG.warning("shared state: %s failed: %s", op, exc or kind)
            else:  # the first of its kind: with its traceback, once
                self._unexpected.add(kind)
                LOG.warning("shared state: %s failed (%s): %s; treated as unavailable",
                            op, kind, exc, exc_info=exc)
            if self._on_error is not None:
                self._on_error(op, exc)
            return False, None
