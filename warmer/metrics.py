"""Prometheus metrics, on a private registry.

Counters and histograms are updated where things happen (from any
thread: prometheus_client is thread-safe). Per-image state is exported by
a collector that reads the engine's cached status at scrape time, so a
scrape never calls Ceph or Glance, and images that went away leave no
stale series behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from warmer import __version__
from warmer.events import is_known

# Copies and repairs can take minutes; the buckets reach an hour.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600, 1800, 3600)

StatusRows = Callable[[], Iterable[tuple[str, str, str, str, str]]]


class StateCollector(Collector):
    """``warmer_images{target, pool, state, reason}`` and
    ``warmer_image_warm{target, pool, image}`` from cached status rows
    ``(image, target, pool, state, reason)``."""

    def __init__(self, rows: StatusRows, tracked: Callable[[], int]) -> None:
        self._rows = rows
        self._tracked = tracked

    def collect(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str, str, str], int] = {}
        warm = GaugeMetricFamily("warmer_image_warm",
                                 "1 when the image is cloneable by Cinder in the target",
                                 labels=["target", "pool", "image"])
        for image, target, pool, state, reason in self._rows():
            key = (target, pool, state, reason)
            counts[key] = counts.get(key, 0) + 1
            warm.add_metric([target, pool, image], 1.0 if state == "warm" else 0.0)
        by_state = GaugeMetricFamily("warmer_images",
                                     "Images by target, warm state and reason",
                                     labels=["target", "pool", "state", "reason"])
        for key, n in sorted(counts.items()):
            by_state.add_metric(list(key), n)
        yield by_state
        yield warm
        yield GaugeMetricFamily("warmer_tracked_images",
                                "Images warmer currently tracks", value=self._tracked())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "warmer_notifications", "Notifications received, by event type and outcome "
            "(handled, ignored, duplicate, stale, deleted, own_download, malformed, requeued, "
            "error)",
            ["event_type", "outcome"], registry=r)
        self.warm_duration = Histogram(
            "warmer_warm_duration_seconds", "Time to make one image cloneable in one "
            "target (checks included)", ["target", "outcome"], buckets=DURATION_BUCKETS,
            registry=r)
        self.changes = Counter(
            "warmer_changes", "Changes warmer made: created_snapshot and "
            "protected_snapshot (on Glance's own images), copied, published_location",
            ["target", "pool", "action"], registry=r)
        self.dependency_up = Gauge(
            "warmer_dependency_up", "1 when the dependency answered its last probe",
            ["dependency"], registry=r)
        self.reconciles = Counter(
            "warmer_reconciliations", "Full reconciliations run, by outcome",
            ["outcome"], registry=r)
        self.evictions = Counter(
            "warmer_evictions", "Copies warmer tried to take out of a target, by reason "
            "(budget, deleted) and result (removed, gone, has_children, glance_refused, "
            "not_owned)", ["target", "reason", "result"], registry=r)
        self.copy_duration = Histogram(
            "warmer_copy_duration_seconds", "Time of one verified copy into a target",
            ["target"], buckets=DURATION_BUCKETS, registry=r)
        self.copied_bytes = Counter(
            "warmer_copy_bytes", "Bytes of image copies, by what happened to them: "
            "written, or skipped as a hole or an all-zero chunk", ["target", "kind"],
            registry=r)
        self.ceph_operations = Counter(
            "warmer_ceph_operations", "rados/rbd operations started, by cephx user and "
            "operation", ["user", "operation"], registry=r)
        self.glance_refusals = Counter(
            "warmer_glance_refusals", "Times Glance said something warmer did not act on: "
            "publish_refused (a location refused), location_conflict (the locations list "
            "changed under a removal: warmer stops touching that image), "
            "unconfirmed_404 (a 404 while the endpoint could not be shown right: nothing "
            "removed)", ["target", "kind"], registry=r)
        self.queue_depth = Gauge(
            "warmer_work_queue_depth", "Images waiting to be evaluated", registry=r)
        Info("warmer_build", "warmer build information", registry=r).info(
            {"version": __version__})

    def add_state_collector(self, rows: StatusRows, tracked: Callable[[], int]) -> None:
        self.registry.register(StateCollector(rows, tracked))

    def notification(self, event_type: object, outcome: str, count: int = 1) -> None:
        # Label values must stay bounded: unknown event types share one label.
        label = event_type if is_known(event_type) else "other"
        self.notifications.labels(label, outcome).inc(count)
