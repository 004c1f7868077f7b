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
from warmer.glance.auth import GlanceAuth
from warmer.glance.client import GlanceClient, GlanceUnavailable
from warmer.glance.stores import StoreCatalog
from warmer.http_api.server import ListenerError, serve
from warmer.metrics import Metrics
from warmer.popularity import Policy
from warmer.sites import SiteMap
from warmer.tracker import Tracker, Weights
from warmer.warming.engine import Draining, Engine
from warmer.warming.target import LocationGuard, Target, TargetConfig, TargetProblem

LOG = logging.getLogger(__name__)
DRAIN_TIMEOUT = 20.0
BUS_PROBE_INTERVAL = 1.0  # seconds; reading the connection state costs nothing


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
        p = conf.popularity
        # Demand is counted per target (a "site"): where it happened, by the
        # Cinder backend, host or zone that [<target>] demand_* names.
        self.sites = SiteMap.from_conf(conf)
        self.tracker = Tracker(half_life=p.half_life, weights=weights_from(conf),
                               policy=policy_from(conf), threshold=p.threshold,
                               top_k=p.top_k, dedup_window=conf.bus.dedup_window,
                               own_users=own_users_from(conf),
                               sites=[t.name for t in self.targets])
        self.engine = Engine(self.tracker, self.glance, self.targets, self.metrics,
                             workers=conf.warming.workers,
                             reconcile_interval=conf.warming.reconcile_interval,
                             retry_delay=conf.warming.retry_delay, stores=self.stores,
                             sites=self.sites)
        self.metrics.add_state_collector(self.engine.status_rows,
                                         lambda: len(self.tracker.image_ids()))
        self.listener: BusListener | None = None
        self.ceph_up: dict[str, bool] = {t.name: False for t in self.targets}
        self._bus_state_visible = True
        self._stop = asyncio.Event()
        self._ceph_ready = asyncio.Event()
        self.http_port: int | None = None

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
                               time.time)
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
                await self._drain(loop)
                main.cancel()
        finally:
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

    def close_ceph(self) -> None:
        """Threads first, connections last: shutting a rados connection down
        under a running call crashes the process. Every target's queued calls
        are cancelled at once, then the running ones are waited for (each is
        bounded by the op timeouts), so the wait is the longest, not the sum."""
        for executor in self.executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        for executor in self.executors.values():
            executor.shutdown(wait=True)
        for t in self.targets:
            t.ceph.close()
            if t.cinder_view is not t.ceph:
                t.cinder_view.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._learn_session_user(), name="session-user")
            tg.create_task(self._probe_ceph(), name="ceph-probe")
            tg.create_task(self._probe_glance(), name="glance-probe")
            await self._wait_for_ceph()
            await self._check_copy_pools()
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
                up = await self.stores.endpoint_is_right(self.engine.expected_stores())
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
