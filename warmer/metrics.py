"""Prometheus metrics, on a private registry.

Counters and histograms are updated where things happen (from any
thread: prometheus_client is thread-safe). Per-image state is exported by
a collector that reads the engine's cached status at scrape time, so a
scrape never calls Ceph or Glance, and images that went away leave no
stale series behind.

What warmer is for shows in Cinder's own notifications, counted as they
arrive (never twice for a redelivery): ``warmer_volume_creates_total``
says whether each volume made from an image found that image warm in its
target, ``warmer_cinder_image_cache_total`` what Cinder's image-volume
cache did. Every metric, its labels and what to do when it looks bad:
``docs/operations.md``.

``_created`` series are not exported (``disable_created_metrics``, which is
process-wide: the daemon has no other registry that wants them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from warmer import __version__
from warmer.events import is_known
from warmer.reasons import Reason

# Copies and repairs can take minutes; the buckets reach an hour.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                    600, 1800, 3600)

StatusRows = Callable[[], Iterable[tuple[str, str, str, str, str]]]
# Why warmer can keep its hands off an image (the engine's ``hands_off``);
# each is exported from the start, at 0 while no image has it.
HANDS_OFF_REASONS = (Reason.LOCATION_CONFLICT,)

# Status-book states of an image that is wanted in a target but neither
# warm nor under way there: the copy backlog.
BACKLOG_STATES = frozenset({"cold", "error"})
# volume.create.end and image_volume_cache.* whose site is not one target
# (several targets share the site, see docs/operations.md).
NO_TARGET = ""


class Sized(Protocol):
    @property
    def size(self) -> int | None: ...


class StateCollector(Collector):
    """``warmer_images{target, pool, state, reason}``,
    ``warmer_image_warm{target, pool, image}`` and the copy backlog
    ``warmer_copy_backlog_images{target}`` and ``_bytes{target}``, from
    cached status rows ``(image, target, pool, state, reason)``.

    One pass over the status book per scrape, O(images x targets): the
    book holds the images warmer tracks and forgets cold ones, the same
    pass the per-image series already needed. Sizes are Glance's, as the
    tracker last saw them (``image``); an image of unknown size adds to the
    images, not to the bytes."""

    def __init__(self, rows: StatusRows, tracked: Callable[[], int], *,
                 image: Callable[[str], Sized | None] | None = None,
                 targets: Sequence[str] = ()) -> None:
        self._rows = rows
        self._tracked = tracked
        self._image = image
        self._targets = targets

    def collect(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str, str, str], int] = {}
        backlog = {t: [0, 0] for t in self._targets}  # target: [images, bytes]
        warm = GaugeMetricFamily("warmer_image_warm",
                                 "1 when the image is cloneable by Cinder in the target",
                                 labels=["target", "pool", "image"])
        for image, target, pool, state, reason in self._rows():
            key = (target, pool, state, reason)
            counts[key] = counts.get(key, 0) + 1
            warm.add_metric([target, pool, image], 1.0 if state == "warm" else 0.0)
            if state in BACKLOG_STATES:
                entry = backlog.setdefault(target, [0, 0])
                entry[0] += 1
                info = self._image(image) if self._image is not None else None
                entry[1] += (info.size or 0) if info is not None else 0
        by_state = GaugeMetricFamily("warmer_images",
                                     "Images by target, warm state and reason",
                                     labels=["target", "pool", "state", "reason"])
        for key, n in sorted(counts.items()):
            by_state.add_metric(list(key), n)
        yield by_state
        yield warm
        images = GaugeMetricFamily(
            "warmer_copy_backlog_images", "Images wanted in the target that are neither "
            "warm nor being copied there (state cold or error)", labels=["target"])
        size = GaugeMetricFamily(
            "warmer_copy_backlog_bytes", "Glance size of the images of "
            "warmer_copy_backlog_images", labels=["target"])
        for target, (n, nbytes) in sorted(backlog.items()):
            images.add_metric([target], n)
            size.add_metric([target], nbytes)
        yield images
        yield size
        yield GaugeMetricFamily("warmer_tracked_images",
                                "Images warmer currently tracks", value=self._tracked())


class HandsOffCollector(Collector):
    """``warmer_hands_off_images{reason}``: images this daemon no longer
    touches (no publish, no eviction, no removal) until it restarts, read
    from the engine's ``hands_off`` (image id: reason) at scrape time. The
    scrape runs on the event loop, where the engine changes that map, so
    it is never read mid-change.

    A gauge, not a counter: it stays up for as long as the image stays
    hands-off, and falls back to 0 only when the daemon that let go of it
    restarts."""

    def __init__(self, hands_off: Callable[[], Mapping[str, str]]) -> None:
        self._hands_off = hands_off

    def collect(self) -> Iterator[Metric]:
        counts: dict[str, int] = {str(r): 0 for r in HANDS_OFF_REASONS}
        for reason in self._hands_off().values():
            counts[reason] = counts.get(reason, 0) + 1
        family = GaugeMetricFamily(
            "warmer_hands_off_images", "Images this daemon no longer touches until it "
            "restarts, by reason (location_conflict: Glance's locations changed under a "
            "removal)", labels=["reason"])
        for reason, n in sorted(counts.items()):
            family.add_metric([reason], n)
        yield family


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
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
            "warmer_reconciliations", "Full reconciliations run, by outcome (ok, failed, "
            "lost_leadership: stopped because this daemon no longer leads)",
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
        self.copy_source_reads = Counter(
            "warmer_copy_source_reads", "Copy sources read to their end: one per read, "
            "however many targets were written from it (fan-out: the targets that copy an "
            "image at the same time share one read and one hash)", registry=r)
        self.copy_source_read_bytes = Counter(
            "warmer_copy_source_read_bytes", "Bytes those reads took from their sources "
            "(holes the source knew of are not read), once per read", registry=r)
        self.copy_verifications = Counter(
            "warmer_copy_verifications", "Copies by how their data was checked against "
            "Glance's digest: verified (hashed, matched), mismatch (hashed, did not match: "
            "not published), skipped_verified (not hashed: the same source snapshot was "
            "verified before, [warming] trust_verified_snapshots), unverified (Glance "
            "records no digest, allow_unverified_copies)", ["target", "result"], registry=r)
        self.ceph_operations = Counter(
            "warmer_ceph_operations", "rados/rbd operations started, by cephx user and "
            "operation", ["user", "operation"], registry=r)
        self.glance_refusals = Counter(
            "warmer_glance_refusals", "Times Glance said something warmer did not act on: "
            "publish_refused (a location refused), location_conflict (the locations list "
            "changed under a removal: warmer stops touching that image), "
            "unconfirmed_404 (a 404 while the endpoint could not be shown right: nothing "
            "removed)", ["target", "kind"], registry=r)
        self.leader = Gauge(
            "warmer_leader", "1 while this daemon is the fleet's leader (runs the "
            "reconciliation), else 0", registry=r)
        self.leader_changes = Counter(
            "warmer_leader_changes", "Times this daemon became the leader or stepped down",
            ["change"], registry=r)
        self.state_errors = Counter(
            "warmer_state_errors", "Operations on the shared state that failed, by "
            "operation (start, refresh, tombstone, flush: retried at the next interval; "
            "for copies: verified, put_verified, remove_verified, mismatched, put_mismatched, "
            "remove_mismatched, put_cost, remove_cost: "
            "not retried, a copy whose record failed is hashed again)", ["op"], registry=r)
        self.state_last_refresh = Gauge(
            "warmer_state_last_refresh_timestamp_seconds", "When this daemon last read "
            "every site's demand from the other daemons (0: never)", registry=r)
        self.volume_creates = Counter(
            "warmer_volume_creates", "Volumes Cinder created from an image "
            "(volume.create.end), by the target of the backend that created them and "
            "whether the image was warm there at that moment (image_state: warm, cold); "
            "target is empty when the backend maps to several targets", ["target", "image_state"],
            registry=r)
        self.cinder_image_cache = Counter(
            "warmer_cinder_image_cache", "Cinder's image-volume cache as Cinder reported "
            "it (image_volume_cache.hit and .miss), by target and kind (hit, miss)",
            ["target", "kind"], registry=r)
        self.ready = Gauge(
            "warmer_ready", "1 while /readyz answers 200 (the bus and every target's "
            "cluster are up), else 0", registry=r)
        self.queue_depth = Gauge(
            "warmer_work_queue_depth", "Images waiting to be evaluated", registry=r)
        Info("warmer_build", "warmer build information", registry=r).info(
            {"version": __version__})

    def add_state_collector(self, rows: StatusRows, tracked: Callable[[], int], *,
                            image: Callable[[str], Sized | None] | None = None,
                            targets: Sequence[str] = ()) -> None:
        self.registry.register(StateCollector(rows, tracked, image=image, targets=targets))

    def add_hands_off(self, hands_off: Callable[[], Mapping[str, str]]) -> None:
        self.registry.register(HandsOffCollector(hands_off))

    def start_targets(self, targets: Sequence[str], *, shared_site: bool = False) -> None:
        """Export the per-target counters at 0 from the start, so that a
        rate, a ratio or an alert on them has a series before the first
        event (a labelled counter is otherwise absent until then). With
        ``shared_site`` (several targets, no site patterns), Cinder's
        events are counted under ``target=""`` too."""
        for target in [*targets, *([NO_TARGET] if shared_site else [])]:
            for state in ("warm", "cold"):
                self.volume_creates.labels(target, state)
            for kind in ("hit", "miss"):
                self.cinder_image_cache.labels(target, kind)
        for target in targets:
            self.glance_refusals.labels(target, "publish_refused")
            self.copy_duration.labels(target)
            for kind in ("written", "hole", "zero"):
                self.copied_bytes.labels(target, kind)
            for result in ("verified", "mismatch", "skipped_verified", "unverified"):
                self.copy_verifications.labels(target, result)
            for reason in ("budget", "deleted"):
                self.evictions.labels(target, reason, "removed")
        for kind in ("location_conflict", "unconfirmed_404"):
            self.glance_refusals.labels(NO_TARGET, kind)
        for outcome in ("ok", "failed", "lost_leadership"):
            self.reconciles.labels(outcome)
        for change in ("became_leader", "stepped_down"):
            self.leader_changes.labels(change)
        for op in ("start", "refresh", "tombstone", "flush"):
            self.state_errors.labels(op)

    def notification(self, event_type: object, outcome: str, count: int = 1) -> None:
        # Label values must stay bounded: unknown event types share one label.
        label = event_type if is_known(event_type) else "other"
        self.notifications.labels(label, outcome).inc(count)
