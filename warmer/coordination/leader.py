"""One leader per fleet, for the fleet-wide work (reconciliation).

The leader holds an exclusive RADOS lock with a lease (``[leader]
lease_seconds``) on the object :data:`LEADER_OBJECT`, in the ``[state]``
pool and namespace that every daemon of the fleet shares. The lock is
:func:`warmer.ceph.images.lease`, the one the copy leases use: taken under
the daemon's name (``[DEFAULT] host``), renewable, and never broken: RADOS
locks belong to a client instance, so a restarted or reconnected daemon
waits for its old lease to run out (another live process may hold it under
the same name).

Timing, with L the lease:

* every daemon tries to take or renew the lock every L/3 (the heartbeat),
  each try bounded by L/3 op timeouts;
* a daemon leads from a successful try until ``start + L - L/5``, where
  ``start`` is when that try began (the lock cannot expire in Ceph before
  ``start + L``: the OSD sets its expiry when it executes the request, which
  is after we sent it). A leader that cannot renew (Ceph down, slow, or its
  connection blocklisted) therefore stops believing it leads L/5 before
  anyone else can take the lock: two daemons never both act as leader,
  assuming clocks that run at the same rate;
* a leader that dies keeps the lock for at most L after its last renewal;
  a follower's next try, at most L/3 later, takes it: another daemon leads
  within L + L/3 (plus a round trip) of the death, under 2L. A clean stop
  releases the lock, and another daemon leads within L/3.

Who leads is recorded in the xattr :data:`RECORD_XATTR` of the lock object
(name, since, last renewal, wall-clock seconds), rewritten at every
renewal; a follower reads it when its try fails, so any daemon can say who
leads without an extra call. Nothing here raises out of :meth:`run`: a
failure is logged, and the next heartbeat tries again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg

from warmer.ceph import images
from warmer.ceph.bindings import Rados, modules
from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephClient, CephUnavailable, ClusterConfig
from warmer.metrics import Metrics

LOG = logging.getLogger(__name__)

LEADER_OBJECT = "warmer.leader"
RECORD_XATTR = "warmer.leader.record"
LOCK_DESC = "warmer leader"


@dataclass(frozen=True)
class LeaderRecord:
    """Who leads, as the leader wrote it (wall-clock seconds)."""

    name: str
    since: float
    renewed: float

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "since": self.since,
                           "renewed": self.renewed}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LeaderRecord:
        try:
            data = json.loads(raw)
            return cls(str(data["name"]), float(data["since"]), float(data["renewed"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"unreadable leader record: {exc}") from exc


class Leadership:
    """This daemon's side of the election: :meth:`run` is the heartbeat,
    :meth:`is_leader` and :meth:`wait` what the engine asks, :meth:`close`
    the clean stop. All on the event loop; Ceph calls go through
    ``client`` (give it a single thread, so that the release on
    :meth:`close` runs after any try still in flight)."""

    def __init__(self, client: CephClient, pool: str, namespace: str, name: str,
                 lease: int, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.pool = pool
        self.namespace = namespace
        self.name = name
        self.lease = lease
        self.interval = lease / 3.0
        self.margin = lease / 5.0
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self._valid_until: float | None = None  # clock(); None: not leader
        self._since: float | None = None  # wall(), start of this term
        self._seen: LeaderRecord | None = None  # the record a failed try read
        self._leading = asyncio.Event()  # set exactly while _valid_until is not None
        self._expiry: asyncio.TimerHandle | None = None
        self._last_error: str | None = None
        self._held = False  # we may hold the lock in Ceph (release it on close)
        self._in_flight = False  # a try is under way (it may take the lock)
        self._closed = False
        if metrics is not None:
            metrics.leader.set(0)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, executor: concurrent.futures.Executor,
                  metrics: Metrics | None = None,
                  observe: Callable[[str, str], None] | None = None) -> Leadership:
        """The leadership that ``[state]`` and ``[leader]`` describe; its
        Ceph calls are bounded by a third of the lease."""
        state, lease = conf.state, conf.leader.lease_seconds
        bound = max(1, lease // 3)
        client = CephClient(ClusterConfig(state.ceph_conf, state.rados_user, state.keyring,
                                          min(state.connect_timeout, bound),
                                          osd_op_timeout=bound, mon_op_timeout=bound),
                            executor, observe)
        return cls(client, state.pool, state.namespace or "", conf.host, lease,
                   metrics=metrics)

    # -- what the engine asks ----------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this daemon leads now. Turns false on its own, by the
        clock, once the lease is too old, even while a renewal hangs."""
        return self._valid_until is not None and self.clock() < self._valid_until

    async def wait(self) -> None:
        """Return once this daemon leads (at once if it does)."""
        while not self.is_leader():
            self._check_expiry()
            await self._leading.wait()

    def view(self) -> dict[str, Any]:
        """Who leads, as far as this daemon knows (no Ceph call): itself,
        or what the lock object said at its last failed try."""
        if self.is_leader():
            assert self._since is not None
            return {"name": self.name, "since": self._since, "self": True}
        if self._seen is None:
            return {"name": None, "self": False}
        return {"name": self._seen.name, "since": self._seen.since,
                "renewed": self._seen.renewed, "self": False}

    # -- the heartbeat -----------------------------------------------------------

    async def run(self) -> None:
        """Try to take or renew the lock every lease/3 until closed or
        cancelled. Never raises on a Ceph failure."""
        try:
            while not self._closed:
                started = self.clock()
                try:
                    await self.attempt()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    LOG.exception("leadership: the heartbeat failed; trying again in %.1fs",
                                  self.interval)
                await asyncio.sleep(max(0.0, started + self.interval - self.clock()))
        finally:
            self._cancel_expiry()

    async def attempt(self) -> bool:
        """One try: take or renew the lock. Returns whether this daemon leads."""
        if self._closed:
            return False
        started = self.clock()
        since = self._since if self.is_leader() and self._since is not None else self.wall()
        record = LeaderRecord(self.name, since, self.wall())
        failures: tuple[type[BaseException], ...] = (CephUnavailable, *ceph_errors())
        self._in_flight = True
        try:
            got, seen = await self.client.run("leader_lock",
                                              lambda c: self._take(c, record))
        except failures as exc:
            self._failed(str(exc) or type(exc).__name__)
            return self.is_leader()
        finally:
            self._in_flight = False
        self._held = self._held or got
        if self._stopped():
            return False  # closed meanwhile; close() releases what we took
        if self._last_error is not None and self._valid_until is None:
            LOG.info("leadership: the leader lock's cluster answers again")
        if got:
            deadline = started + self.lease - self.margin
            if self.clock() >= deadline:
                self._failed(f"the renewal took {self.clock() - started:.1f}s")
                return False
            self._last_error = None
            self._renewed(deadline, since)
        else:
            self._last_error = None
            self._seen = seen
            LOG.debug("leadership: the leader lock is held by %s",
                      seen.name if seen is not None else "another daemon")
            if self._valid_until is not None:
                holder = seen.name if seen is not None else "another daemon"
                self._step_down(f"the lock is held by {holder}")
        return self.is_leader()

    async def close(self) -> None:
        """Clean stop: stop acting as leader at once, stop trying, and
        release the lock so that another daemon takes over within lease/3.
        The release waits at most lease/3; the lease covers the rest."""
        if self._closed:
            return
        self._closed = True
        if self._valid_until is not None:
            self._step_down("this daemon is stopping")
        self._cancel_expiry()
        if not (self._held or self._in_flight):
            return
        failures: tuple[type[BaseException], ...] = (TimeoutError, CephUnavailable,
                                                     *ceph_errors())
        try:
            await asyncio.wait_for(self.client.run("leader_unlock", self._release),
                                   self.interval)
            self._held = False
            LOG.info("leadership: released the leader lock")
        except failures as exc:
            LOG.warning("leadership: could not release the leader lock (%s); it runs out "
                        "within %ss", exc or type(exc).__name__, self.lease)

    # -- state changes (on the loop) --------------------------------------------

    def _stopped(self) -> bool:
        return self._closed

    def _renewed(self, deadline: float, since: float) -> None:
        self._check_expiry()  # a term that lapsed before this renewal ended
        became = self._valid_until is None
        self._valid_until = deadline
        self._since = since
        self._schedule_expiry(deadline)
        if became:
            self._leading.set()
            LOG.info("leadership: this daemon (%s) is now the leader: it took the lock "
                     "%s in pool %s%s (lease %ss)", self.name, LEADER_OBJECT, self.pool,
                     f" namespace {self.namespace}" if self.namespace else "", self.lease)
            if self.metrics is not None:
                self.metrics.leader.set(1)
                self.metrics.leader_changes.labels("became_leader").inc()

    def _failed(self, why: str) -> None:
        first, self._last_error = self._last_error is None, why
        if self._valid_until is not None:
            left = self._valid_until - self.clock()
            LOG.warning("leadership: cannot renew the leader lock: %s; stepping down in "
                        "%.1fs unless a renewal succeeds", why, max(0.0, left))
            self._check_expiry()
        else:
            # A follower that cannot reach Ceph cannot take over: say so
            # once, and again only after a try succeeded.
            LOG.log(logging.WARNING if first else logging.DEBUG,
                    "leadership: cannot try to take the leader lock: %s; trying again "
                    "every %.1fs", why, self.interval)

    def _step_down(self, why: str) -> None:
        self._valid_until = None
        self._since = None
        self._leading.clear()
        self._cancel_expiry()
        LOG.info("leadership: this daemon (%s) steps down: %s", self.name, why)
        if self.metrics is not None:
            self.metrics.leader.set(0)
            self.metrics.leader_changes.labels("stepped_down").inc()

    def _check_expiry(self) -> None:
        if self._valid_until is not None and self.clock() >= self._valid_until:
            why = f"last error: {self._last_error}" if self._last_error else "no renewal"
            self._step_down(f"the lease was not renewed in time ({why}); stepping down "
                            f"{self.margin:.1f}s before the lock can expire in Ceph")

    def _schedule_expiry(self, deadline: float) -> None:
        self._cancel_expiry()
        loop = asyncio.get_running_loop()
        # Step down (log, metric) when the deadline passes even if the
        # heartbeat is stuck in a call; is_leader() already says so by then.
        self._expiry = loop.call_later(max(0.0, deadline - self.clock()), self._check_expiry)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    # -- blocking, on the client's thread ---------------------------------------

    def _ioctx(self, cluster: Rados) -> Any:
        ioctx = cluster.open_ioctx(self.pool)
        if self.namespace:
            ioctx.set_namespace(self.namespace)  # type: ignore[attr-defined]
        return ioctx

    def _take(self, cluster: Rados, record: LeaderRecord
              ) -> tuple[bool, LeaderRecord | None]:
        rados, _ = modules()
        ioctx = self._ioctx(cluster)
        try:
            if images.lease(ioctx, LEADER_OBJECT, self.name, self.lease, desc=LOCK_DESC):
                ioctx.set_xattr(LEADER_OBJECT, RECORD_XATTR, record.to_json())
                return True, None
            try:
                raw = ioctx.get_xattr(LEADER_OBJECT, RECORD_XATTR)
            except (rados.ObjectNotFound, rados.NoData):
                return False, None
            try:
                return False, LeaderRecord.from_json(raw)
            except ValueError as exc:
                LOG.warning("leadership: %s in %s", exc, LEADER_OBJECT)
                return False, None
        finally:
            ioctx.close()

    def _release(self, cluster: Rados) -> None:
        ioctx = self._ioctx(cluster)
        try:
            images.release_lease(ioctx, LEADER_OBJECT, self.name)
        finally:
            ioctx.close()
