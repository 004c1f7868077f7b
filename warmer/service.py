"""The warmer daemon: builds the parts from config and supervises them.

Start-up order: HTTP (so /healthz answers at once), Ceph connections
(retried until they work), the engine, then the bus listener. READY=1 goes
to systemd once the bus is consumed and every target's cluster answered.

Shutdown (SIGTERM or SIGINT): stop taking events (the listener stops and
waits for in-flight callbacks; anything not handed off is requeued), let
the engine finish the evaluation in progress for up to ``drain_timeout``,
then cancel, close Glance and Ceph connections, and return 0. SIGHUP
re-reads the mutable options (the [popularity] group).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from oslo_config import cfg

from warmer import systemd
from warmer.bus.listener import Bridge, BusListener
from warmer.ceph.bindings import errors as ceph_errors
from warmer.ceph.client import CephClient, CephUnavailable, ClusterConfig
from warmer.coordination.leader import Leadership
from warmer.glance.auth import GlanceAuth
from warmer.glance.client import GlanceClient, GlanceUnavailable
from warmer.glance.stores import StoreCatalog
from warmer.http_api.server import ListenerError, serve
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.sites import SHARED_SITE, SiteMap
from warmer.state.fleet import FleetDemand, SiteStore, demand_namespace
from warmer.state.memory import MemoryStore
from warmer.state.rados import RadosStore
from warmer.state.store import StateStore
from warmer.tracker import Tracker, Weights
from warmer.warming.copy import CopyStats
from warmer.warming.engine import Draining, Engine
from warmer.warming.reconciler import Alone
from warmer.warming.records import CopyRecords
from warmer.warming.target import LocationGuard, Target, TargetConfig, TargetProblem

LOG = logging.getLogger(__name__)
DRAIN_TIMEOUT = 20.0
STATE_THREADS = 2  # the shared state's own Ceph threads: a sick state cluster holds only these
BUS_PROBE_INTERVAL = 1.0  # seconds; reading the connection state costs nothing
STATUS_INTERVAL = 5.0  # seconds between two looks at the STATUS= line (sent when it changed)


def status_text(warm: int, copying: int, failing: int, leader: dict[str, object]) -> str:
    """The one line ``systemctl status`` shows (sd_notify ``STATUS=``):
    copies (image x target) warm, copies under way, rows in error, and
    this daemon's part in the fleet (``leader``, ``follower of NAME``, or
    ``no leader seen``)."""
    if leader.get("self"):
        role = "leader"
    elif leader.get("name"):
        role = f"follower of {leader['name']}"
    else:
        role = "no leader seen"
    return f"{warm} warm, {copying} copying, {failing} failing, {role}"


def policy_from(conf: cfg.ConfigOpts) -> Policy:
    p = conf.popularity
    return Policy(disk_formats=frozenset(p.disk_formats), max_image_size=p.max_image_size,
                  visibilities=frozenset(p.visibilities), pin_property=p.pin_property or "",
                  pin_tag=p.pin_tag or "")


def weights_from(conf: cfg.ConfigOpts) -> Weights:
    p = conf.popularity
    return Weights(volume_create=p.weight_volume_create, cache_miss=p.weight_cache_miss,
                   cache_hit=p.weight_cache_hit, image_send=p.weight_image_send)


def own_users_from(conf: cfg.ConfigOpts) -> frozenset[str]:
    """Configured Glance users whose downloads are not demand (invariant 9)."""
    return frozenset(u for u in conf.popularity.ignored_download_users if u)


def cluster_config(group: cfg.ConfigOpts.GroupAttr, user: str,
                   keyring: str | None) -> ClusterConfig:
    """How to connect to a target's cluster as ``user``: the same timeouts
    for warmer's and Cinder's user."""
    return ClusterConfig(group.ceph_conf, user, keyring, group.connect_timeout,
                         osd_op_timeout=group.rados_osd_op_timeout,
                         mon_op_timeout=group.rados_mon_op_timeout)


def count_copy(metrics: Metrics, target: Target, stats: CopyStats) -> None:
    """A finished copy into ``target``, counted whatever happens to its
    publication (its bytes by kind, and its duration)."""
    metrics.copied_bytes.labels(target.name, "written").inc(stats.written)
    metrics.copied_bytes.labels(target.name, "hole").inc(stats.skipped_holes)
    metrics.copied_bytes.labels(target.name, "zero").inc(stats.skipped_zeros)
    metrics.copy_duration.labels(target.name).observe(stats.seconds)


def build_targets(conf: cfg.ConfigOpts, executor_for: Callable[[str], Executor],
                  metrics: Metrics, glance: GlanceClient,
                  stores: StoreCatalog | None = None) -> list[Target]:
    """One :class:`Target` per ``enabled_targets`` group. Each target's
    calls (as warmer's and as Cinder's user) run on the executor
    ``executor_for(name)`` gives it, so that a hung cluster holds only its
    own threads."""
    def observe(user: str, op: str) -> None:
        metrics.ceph_operations.labels(user, op).inc()

    targets: list[Target] = []
    for name in conf.enabled_targets:
        group = conf[name]
        executor = executor_for(name)
        ceph = CephClient(cluster_config(group, group.rados_user, group.keyring),
                          executor, observe)
        cinder = None
        if group.cinder_user:
            cinder = CephClient(cluster_config(group, group.cinder_user, group.cinder_keyring),
                                executor, observe)
        config = TargetConfig(name, group.pool, group.glance_store or name,
                              group.repair_glance_snapshots, group.copy_images,
                              group.copy_window, group.copy_lock_seconds,
                              group.allow_unverified_copies, group.capacity_bytes,
                              group.capacity_images, group.copy_pool or None)
        targets.append(Target(config, ceph, cinder, glance=glance, stores=stores,
                              sources=lambda: {t.ceph.fsid: t.ceph for t in targets
                                               if t.ceph.fsid},
                              owner=f"warmer@{conf.host}"))
        targets[-1].on_copied = functools.partial(count_copy, metrics)
        targets[-1].on_checked = lambda t, outcome: metrics.copy_verifications.labels(
            t.name, outcome).inc()
    # Location changes of every target, and of every daemon, take one lock
    # per image in the first copying target's pool: all daemons must list
    # the same targets in the same order.
    copying = [t for t in targets if t.config.copy_images]
    if copying:
        guard = LocationGuard(copying[0])
        for t in targets:
            t.location_guard = guard
    return targets


class Service:
    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf
        self.metrics = Metrics()
        # One bounded pool of threads per target: blocking rados/rbd calls to
        # a hung cluster can only exhaust that target's threads.
        self.executors: dict[str, ThreadPoolExecutor] = {}
        self.glance_auth = GlanceAuth(conf)
        self.glance = GlanceClient(conf.glance.endpoint, auth=self.glance_auth,
                                   max_connections=conf.glance.max_connections)
        # warmer's own Keystone user, once known: its downloads are not demand.
        self.session_user: str | None = None
        self.stores = StoreCatalog(self.glance)
        self.targets = build_targets(conf, self._executor_for, self.metrics, self.glance,
                                     self.stores)
        if not self.targets:
            raise SystemExit("no targets: set [DEFAULT] enabled_targets and one group each")
        # The leader lock's calls get a thread of their own, one only: the
        # release on a clean stop then runs after any try still in flight.
        self.leader_executor = ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="ceph-leader")
        self.leadership = Leadership.from_conf(conf, self.leader_executor, self.metrics,
                                               self._observe_ceph)
        p = conf.popularity
        # Demand is counted per target (a "site"): where it happened, by the
        # Cinder backend, host or zone that [<target>] demand_* names.
        sites = SiteMap.from_conf(conf)
        # Without patterns every event counts in every target: one shared
        # site then does it at 1/targets of the cost (time and memory).
        self.sites: SiteMap | None = None if sites.counts_everywhere else sites
        self.tracker = Tracker(half_life=p.half_life, weights=weights_from(conf),
                               policy=policy_from(conf), threshold=p.threshold,
                               top_k=p.top_k, dedup_window=conf.bus.dedup_window,
                               own_users=own_users_from(conf),
                               sites=([t.name for t in self.targets] if self.sites
                                      else [SHARED_SITE]))
        self.engine = Engine(self.tracker, self.glance, self.targets, self.metrics,
                             workers=conf.warming.workers,
                             reconcile_interval=conf.warming.reconcile_interval,
                             forget_below=conf.popularity.forget_below,
                             eviction_margin=conf.warming.eviction_margin,
                             view_ttl=conf.warming.glance_view_ttl,
                             fanout_wait=conf.warming.fanout_wait,
                             retry_delay=conf.warming.retry_delay, stores=self.stores,
                             sites=self.sites,
                             # Without shared state there is no fleet: this
                             # daemon alone does the fleet-wide work.
                             leader=self.leadership if conf.state.enabled else Alone())
        self.metrics.add_state_collector(self.engine.status_rows,
                                         lambda: len(self.tracker.image_ids()),
                                         image=self.tracker.image,
                                         targets=[t.name for t in self.targets])
        self.metrics.add_hands_off(lambda: self.engine.hands_off)
        self.metrics.ready.set_function(lambda: float(all(self.ready().values())))
        self.state_executor: ThreadPoolExecutor | None = None
        self.fleet = self._build_fleet()
        self._fleet_task: asyncio.Task[None] | None = None
        self.listener: BusListener | None = None
        self.ceph_up: dict[str, bool] = {t.name: False for t in self.targets}
        self._bus_state_visible = True
        self._stop = asyncio.Event()
        self._ceph_ready = asyncio.Event()
        self.http_port: int | None = None

    def _observe_ceph(self, user: str, op: str) -> None:
        self.metrics.ceph_operations.labels(user, op).inc()

    def status(self) -> dict[str, object]:
        """``GET /v1/status``: this daemon, and who leads (from memory)."""
        return {"host": self.conf.host, "leader": self._leader_view(),
                "summary": self.status_line()}

    def _leader_view(self) -> dict[str, object]:
        if not self.conf.state.enabled:
            return {"name": self.conf.host, "self": True, "alone": True}
        return dict(self.leadership.view())

    def bus_up(self) -> bool:
        """The listener consumes and its AMQP connection is up. If the
        connection state cannot be seen (another oslo.messaging), only
        whether the listener runs."""
        if self.listener is None or not self.listener.running:
            return False
        connected = self.listener.connected()
        if connected is None:
            if self._bus_state_visible:
                self._bus_state_visible = False
                LOG.warning("cannot see the bus connection's state with this "
                            "oslo.messaging; /readyz reports only that the listener runs")
            return True
        return connected

    def _executor_for(self, target: str) -> ThreadPoolExecutor:
        if target not in self.executors:
            self.executors[target] = ThreadPoolExecutor(
                max_workers=self.conf.warming.ceph_threads,
                thread_name_prefix=f"ceph-{target}")
        return self.executors[target]

    def ready(self) -> dict[str, bool]:
        checks = {"bus": self.bus_up()}
        checks.update({f"ceph:{name}": up for name, up in self.ceph_up.items()})
        return checks

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read config files and apply the mutable options."""
        self.conf.mutate_config_files()
        p = self.conf.popularity
        self.tracker.policy = policy_from(self.conf)
        self.tracker.weights = weights_from(self.conf)
        self.tracker.threshold, self.tracker.top_k = p.threshold, p.top_k
        self.engine.forget_below = p.forget_below
        self.tracker.set_half_life(p.half_life, self.engine.clock())
        self.tracker.own_users = self._own_users()
        LOG.info("configuration reloaded")
        for image_id in self.tracker.image_ids():
            self.engine.enqueue(image_id)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            http = await serve(self.conf.http, self.engine, self.metrics, self.ready,
                               time.time, status=self.status, pins=self.fleet)
        except ListenerError as exc:
            await self.glance.close()
            raise SystemExit(f"warmer-daemon: {exc}") from None
        self.http_port = http.port
        try:
            async with asyncio.TaskGroup() as tg:
                main = tg.create_task(self._main(loop), name="main")
                await self._stop.wait()
                LOG.info("stopping: draining")
                systemd.notify("STOPPING=1", "STATUS=draining")
                # First, so that another daemon takes over while this one drains.
                await self.leadership.close()
                await self._drain(loop)
                await self._stop_fleet()
                main.cancel()
        finally:
            await self.leadership.close()  # if not done yet (an error)
            await http.close()
            await self.glance.close()
            self.close_ceph()
        LOG.info("stopped")
        return 0

    def _own_users(self) -> frozenset[str]:
        users = own_users_from(self.conf)
        return users | {self.session_user} if self.session_user else users

    async def _learn_session_user(self) -> None:
        """Add warmer's own Keystone user to the users whose downloads are
        not demand (invariant 9), as soon as Keystone tells it; retried with
        back-off, since Keystone may be down when warmer starts. Without
        keystoneauth ([glance] auth_type), only the configured list applies."""
        if not self.glance_auth.authenticated:
            return
        delay = 5.0
        while True:
            user = await self.glance_auth.user_id()
            if user:
                self.session_user = user
                self.tracker.own_users = self._own_users()
                LOG.info("downloads by warmer's own Keystone user %s are not demand", user)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)

    # -- the shared demand ([state], warmer/state/fleet.py) ------------------------------

    def _build_fleet(self) -> FleetDemand:
        """The fleet's shared demand: one shard per site (the tracker's sites,
        the target names) in RADOS as ``[state]`` says, or in memory with
        ``[state] enabled = false`` (nothing shared, nothing kept across a
        restart). Hooked to the tracker (every counted event) and to the
        engine (confirmed deletes become tombstones)."""
        group = self.conf.state
        base: StateStore
        demand: dict[str, StateStore]
        try:
            if group.enabled:
                self.state_executor = ThreadPoolExecutor(max_workers=STATE_THREADS,
                                                         thread_name_prefix="ceph-state")
                rados = RadosStore.from_conf(
                    self.conf, self.state_executor,
                    lambda user, op: self.metrics.ceph_operations.labels(user, op).inc())
                base = rados
                demand = {site: RadosStore(rados.client, rados.pool,
                                           demand_namespace(rados.namespace, site))
                          for site in self.tracker.sites}
            else:
                base = MemoryStore()
                demand = {site: MemoryStore() for site in self.tracker.sites}
            fleet = FleetDemand(
                self.tracker, base, {site: SiteStore(base, demand[site]) for site in demand},
                daemon=self.conf.host, flush_interval=group.flush_interval,
                refresh_interval=group.refresh_interval, floor=group.demand_floor,
                tombstone_ttl=group.tombstone_ttl,
                on_error=lambda op, exc: self.metrics.state_errors.labels(op).inc(),
                on_changed=self.engine.enqueue)
        except ValueError as exc:  # a site or daemon name that cannot name a shard
            raise SystemExit(f"warmer-daemon: [state]: {exc}") from None
        self.tracker.on_demand = fleet.count
        self.records = CopyRecords(
            base, self.conf.host, trust=self.conf.warming.trust_verified_snapshots,
            on_error=lambda op, exc: self.metrics.state_errors.labels(op).inc())
        for target in self.targets:
            target.records = self.records
        self.engine.on_deleted = fleet.record_deleted
        self.engine.on_revived = fleet.record_revived
        self.metrics.state_last_refresh.set_function(lambda: fleet.last_refresh or 0.0)
        return fleet

    async def _start_fleet(self, tg: asyncio.TaskGroup) -> None:
        """Claim this daemon's shards and read the fleet's demand before
        consuming, so that scores are there once READY; then keep writing
        and refreshing in the background. Bounded: a state cluster that
        does not answer delays the start by at most its connect and op
        timeouts, and never fails it (/readyz does not depend on the state;
        the background task retries)."""
        group = self.conf.state
        limit = group.connect_timeout + 2 * 30.0
        started = time.monotonic()
        try:
            ok = await asyncio.wait_for(self.fleet.start(), limit)
        except TimeoutError:
            ok = False
        where = (f"pool {group.pool}, namespace {group.namespace or '(default)'}"
                 if group.enabled else "in memory only ([state] enabled = false)")
        if ok:
            LOG.info("shared demand loaded in %.2fs (%s): %d images tracked, sites %s",
                     time.monotonic() - started, where, len(self.tracker.image_ids()),
                     ", ".join(self.fleet.sites))
        else:
            LOG.error("shared demand (%s) is not available yet: scores hold only what "
                      "this daemon counts until it is (retried every %.0fs)", where,
                      group.refresh_interval)
        self._fleet_task = tg.create_task(self.fleet.run(), name="fleet-state")

    async def _stop_fleet(self) -> None:
        """Write this daemon's demand a last time (bounded), then close the
        state's threads and connection, in that order."""
        self.fleet.stop()
        if self._fleet_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._fleet_task), DRAIN_TIMEOUT)
            except TimeoutError:
                LOG.error("shared demand: the last write did not finish in %.0fs",
                          DRAIN_TIMEOUT)
        if self.state_executor is not None:
            self.state_executor.shutdown(wait=True, cancel_futures=True)
            base = self.fleet.base
            if isinstance(base, RadosStore):
                await asyncio.get_running_loop().run_in_executor(None, base.client.close)

    def close_ceph(self) -> None:
        """Threads first, connections last: shutting a rados connection down
        under a running call crashes the process. Every target's queued calls
        are cancelled at once, then the running ones are waited for (each is
        bounded by the op timeouts), so the wait is the longest, not the sum."""
        executors = [*self.executors.values(), self.leader_executor]
        for executor in executors:
            executor.shutdown(wait=False, cancel_futures=True)
        for executor in executors:
            executor.shutdown(wait=True)
        self.leadership.client.close()
        for t in self.targets:
            t.ceph.close()
            if t.cinder_view is not t.ceph:
                t.cinder_view.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.conf.state.enabled:
                tg.create_task(self.leadership.run(), name="leadership")
            tg.create_task(self._learn_session_user(), name="session-user")
            tg.create_task(self._probe_ceph(), name="ceph-probe")
            tg.create_task(self._probe_glance(), name="glance-probe")
            await self._wait_for_ceph()
            await self._check_copy_pools()
            await self._start_fleet(tg)
            # What a crash left behind is cleaned up by the first
            # reconciliation, which the engine starts at once.
            tg.create_task(self.engine.run(), name="engine")
            bridge = Bridge(loop, self.engine.fold, self.metrics,
                            max_payload_bytes=self.conf.bus.max_payload_bytes,
                            handoff_timeout=self.conf.bus.handoff_timeout,
                            transient=(Draining,))
            self.listener = BusListener(self.conf, bridge)
            await loop.run_in_executor(None, self.listener.start)
            self.metrics.dependency_up.labels("bus").set(1 if self.bus_up() else 0)
            tg.create_task(self._probe_bus(), name="bus-probe")
            LOG.info("consuming notifications (pool %s)", self.conf.bus.pool)
            systemd.notify("READY=1", "STATUS=consuming notifications")
            interval = systemd.watchdog_interval()
            if interval:
                tg.create_task(self._watchdog(interval), name="watchdog")
            tg.create_task(self._report_status(), name="systemd-status")

    async def _check_copy_pools(self) -> None:
        """Say at start-up where each target's copies go, and loudly when the
        config and Glance's stores disagree. Never fatal: a target that
        cannot resolve its pool reports it per image and retries."""
        for t in self.targets:
            if not t.config.copy_images:
                continue
            try:
                pool = await t.copy_pool()
                store = await self.stores.store(t.config.glance_store)
            except TargetProblem as exc:
                LOG.error("target %s: copies are not possible: %s", t.name, exc)
                continue
            except (GlanceUnavailable, CephUnavailable) as exc:
                LOG.warning("target %s: cannot check the copy pool now: %s", t.name, exc)
                continue
            if store is not None and store.pool and store.pool != pool:
                LOG.error("target %s: copy_pool %s is not the pool of Glance store %s (%s); "
                          "Glance's user may be unable to open or delete warmer's copies",
                          t.name, pool, store.id, store.pool)
            if pool == t.config.pool:
                LOG.warning("target %s: copies go into Cinder's pool %s (explicit "
                            "copy_pool): warmer then holds write caps on Cinder's volumes",
                            t.name, pool)
            LOG.info("target %s: copies go into pool %s", t.name, pool)

    async def _wait_for_ceph(self) -> None:
        await self._ceph_ready.wait()

    async def _probe_glance(self) -> None:
        """``warmer_dependency_up{dependency="glance"}``: Glance answers, and
        its stores are the ones the targets name (a known-good request)."""
        while True:
            try:
                up = await self.stores.endpoint_is_right(self.engine.deletes.expected_stores())
            except GlanceUnavailable as exc:
                LOG.warning("Glance unreachable: %s", exc)
                up = False
            self.metrics.dependency_up.labels("glance").set(1 if up else 0)
            await asyncio.sleep(self.conf.warming.ceph_probe_interval)

    async def _probe_ceph(self) -> None:
        """Probe every target on its own: a cluster that does not answer
        delays only its own verdict."""
        async with asyncio.TaskGroup() as tg:
            for t in self.targets:
                tg.create_task(self._probe_target(t), name=f"ceph-probe-{t.name}")

    async def _probe_target(self, t: Target) -> None:
        group = self.conf[t.name]
        # A probe is a connect, a mon and an OSD operation, each bounded by
        # its own timeout; past their sum (threads all busy), it is down too.
        limit = group.connect_timeout + group.rados_mon_op_timeout + group.rados_osd_op_timeout
        while True:
            up = await self._probe_once(t, limit)
            if up != self.ceph_up[t.name]:
                LOG.info("target %s: Ceph is %s", t.name, "up" if up else "down")
            self.ceph_up[t.name] = up
            self.metrics.dependency_up.labels(f"ceph:{t.name}").set(1 if up else 0)
            if all(self.ceph_up.values()):
                self._ceph_ready.set()
            await asyncio.sleep(self.conf.warming.ceph_probe_interval if up else 2.0)

    @staticmethod
    async def _probe_once(t: Target, limit: float) -> bool:
        try:
            await asyncio.wait_for(t.ceph.probe(t.config.pool), limit)
            return True
        except TimeoutError:
            LOG.warning("target %s: Ceph did not answer within %.0fs", t.name, limit)
        except CephUnavailable as exc:
            LOG.warning("target %s: Ceph unreachable: %s", t.name, exc)
        except ceph_errors() as exc:  # e.g. the pool is missing, or caps
            LOG.warning("target %s: Ceph probe failed: %s", t.name, exc)
        return False

    async def _probe_bus(self) -> None:
        """Keep ``warmer_dependency_up{dependency="bus"}`` current and log
        when the listener's connection goes and comes back (the driver
        reconnects by itself; /readyz reads the state live)."""
        was_up = True
        while not self._stop.is_set():  # once stopping, _drain says the bus is down
            up = self.bus_up()
            self.metrics.dependency_up.labels("bus").set(1 if up else 0)
            if up != was_up:
                if up:
                    LOG.info("bus connection is back; consuming again")
                else:
                    LOG.warning("bus connection lost; not consuming until the "
                                "driver reconnects")
                was_up = up
            await asyncio.sleep(BUS_PROBE_INTERVAL)

    def status_line(self) -> str:
        warm, copying, failing = self.engine.ops.summary()
        return status_text(warm, copying, failing, self._leader_view())

    async def _report_status(self) -> None:
        """``STATUS=`` for ``systemctl status``: looked at every
        STATUS_INTERVAL, sent only when the line changed."""
        last = None
        while not self._stop.is_set():
            line = self.status_line()
            if line != last:
                systemd.notify(f"STATUS={line}")
                last = line
            await asyncio.sleep(STATUS_INTERVAL)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the loop itself: a blocked loop stops the pings.
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        self.engine.stop_intake()
        if self.listener is not None:
            # Stop consuming; callbacks in flight finish or requeue.
            await loop.run_in_executor(None, self.listener.stop)
            self.metrics.dependency_up.labels("bus").set(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.engine.idle(), DRAIN_TIMEOUT)
