#!/usr/bin/env python3
"""Benchmark: warmer's notification intake against a bare kombu consumer (issue 9).

On the local stack (tools/stack: its RabbitMQ and its Glance), per run:

1. a fresh RabbitMQ vhost; warmer's pool queue and a second queue for the
   bare consumer are bound to Cinder's exchange (``openstack``,
   ``notifications.info``), so both get a copy of every message;
2. ``--events`` Cinder ``volume.create.end`` notifications (default
   20,000), published by real oslo.messaging Notifiers, each a new volume
   made from one of the N images (uniformly at random), are queued in
   both queues before anything consumes;
3. warmer drains its queue: the daemon's own parts, built from config by
   :class:`warmer.service.Service` (tracker, engine with its workers and
   reconciler, Glance client, the stack's Ceph targets) and the bus
   listener and bridge on the daemon's loop, with the full processing:
   parse, dedup, popularity, scheduling and running of evaluations. Timed
   from the listener's start until every message was handed off and
   counted (a message is acked only after that);
4. a bare kombu consumer drains the same messages from its own queue:
   the same prefetch as warmer's, ``ack()`` per message, and kombu's own
   decoding of the body (the outer JSON; not oslo's envelope, no parse);
5. the Glance reads of the run: ``GET /v2/images/{id}`` lines in the
   stack's uwsgi log, per image, once the engine is idle.

The images are real Glance images (``queued``: created with no data, which
is cheap; the policy then finds them not ``active``, so nothing is ever
copied and no Ceph work blurs the intake). They are created once and kept
in ``DIR/intake-images.json`` for later runs.

Reported: msg/s of both, their ratio, medians of ``--repeat`` runs.

``--intake-only`` hands the events to a sink that only counts them, with
no engine (no fold into the tracker, no evaluation, no Glance read): the
listener and the bridge alone, against the same bare consumer.

  tools/stack up /tmp/st && \\
  .venv/bin/python bench/intake_bench.py --stack /tmp/st [--images 1000,10000] \\
      [--events 20000] [--repeat 3] [--intake-only]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import kombu  # noqa: E402
from oslo_config import cfg  # noqa: E402
from stackclient import Stack, rabbit  # noqa: E402
from stackclient.cinder import CinderNotifier  # noqa: E402

from warmer import conf as warmer_conf  # noqa: E402
from warmer.bus.listener import Bridge, BusListener  # noqa: E402
from warmer.ceph import bindings  # noqa: E402
from warmer.service import Service  # noqa: E402
from warmer.warming.engine import Draining  # noqa: E402

EVENT = "volume.create.end"
GET_IMAGE = re.compile(r"\] GET /v2/images/([0-9a-f-]{36}) =>")


def images(stack: Stack, count: int) -> list[str]:
    """``count`` queued raw images in the stack's Glance (created once)."""
    cache = stack.dir / "intake-images.json"
    known: list[str] = json.loads(cache.read_text()) if cache.exists() else []

    def create(n: int) -> str:
        body = json.dumps({"name": f"intake-{n}", "disk_format": "raw",
                           "container_format": "bare"}).encode()
        req = urllib.request.Request(stack["GLANCE_URL"] + "/v2/images", data=body,
                                     method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return str(json.load(resp)["id"])
    if len(known) < count:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            known += list(pool.map(create, range(len(known), count)))
        cache.write_text(json.dumps(known))
        print(f"created {count} Glance images in {time.monotonic() - started:.0f}s",
              flush=True)
    return known[:count]


def publish(url: str, ids: list[str], events: int, seed: int) -> None:
    """``events`` volume.create.end, from 4 Notifiers in parallel."""
    rng = random.Random(seed)
    chosen = [rng.choice(ids) for _ in range(events)]

    def one(part: list[str]) -> None:
        notifier = CinderNotifier(url)
        try:
            for image_id in part:
                notifier.volume_created({"id": image_id, "disk_format": "raw", "size": 1})
        finally:
            notifier.close()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(one, [chosen[n::4] for n in range(4)]))


def amqp(url: str) -> str:
    """oslo.messaging's ``rabbit://`` URL, as kombu spells it."""
    return "amqp://" + url.removeprefix("rabbit://")


def depth(url: str, queue: str) -> int:
    with kombu.Connection(amqp(url)) as conn:
        _, count, _ = conn.default_channel.queue_declare(queue, passive=True)
        return int(count)


def load_conf(stack: Stack, url: str, pool: str, extra: str) -> cfg.ConfigOpts:
    override = Path(tempfile.mkstemp(suffix=".conf", dir=stack.dir)[1])
    override.write_text(f"[DEFAULT]\ntransport_url = {url}\n[bus]\npool = {pool}\n{extra}\n")
    return warmer_conf.load(["--config-file", str(ROOT / "config" / "warmer-local.conf"),
                             "--config-file", stack["WARMER_STACK_CONF"],
                             "--config-file", str(override)])


#: Outcomes that do not settle a published event once: a requeued one comes
#: back, and a duplicate is a second delivery of one already counted.
NOT_FINAL = frozenset({"requeued", "duplicate"})


def counted(service: Service) -> float:
    """The bench's events settled once (each outcome but requeued and
    duplicate), read without a scrape: the run cannot stop early on
    redeliveries."""
    total = 0.0
    for metric in service.metrics.notifications.collect():
        for sample in metric.samples:
            if (sample.name.endswith("_total") and sample.labels.get("event_type") == EVENT
                    and sample.labels.get("outcome") not in NOT_FINAL):
                total += sample.value
    return total


def only_count(event: Any) -> str:
    """The sink of ``--intake-only``."""
    return "handled"


async def run_warmer(service: Service, events: int,
                     intake_only: bool = False) -> tuple[float, dict[str, float]]:
    loop = asyncio.get_running_loop()
    bindings.modules()  # the daemon loaded them when it connected to Ceph
    engine_task = asyncio.create_task(service.engine.run())
    sink = only_count if intake_only else service.engine.fold
    bridge = Bridge(loop, sink, service.metrics,
                    max_payload_bytes=service.conf.bus.max_payload_bytes,
                    handoff_timeout=service.conf.bus.handoff_timeout, transient=(Draining,))
    listener = BusListener(service.conf, bridge)
    started = time.monotonic()
    await loop.run_in_executor(None, listener.start)
    try:
        while counted(service) < events:  # noqa: ASYNC110 (a cheap read, no scrape)
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        await asyncio.wait_for(service.engine.idle(), 300)
    finally:
        service.engine.stop_intake()
        await loop.run_in_executor(None, listener.stop)
        engine_task.cancel()
        await asyncio.gather(engine_task, return_exceptions=True)
        await service.glance.close()
    outcomes: dict[str, float] = {}
    for metric in service.metrics.notifications.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("event_type") == EVENT:
                outcomes[sample.labels["outcome"]] = sample.value
    return elapsed, outcomes


def run_bare(url: str, queue: str, events: int, prefetch: int) -> float:
    seen = 0

    def on_message(body: Any, message: kombu.Message) -> None:
        nonlocal seen
        message.ack()
        seen += 1
    with kombu.Connection(amqp(url)) as conn:
        with conn.Consumer(kombu.Queue(queue, no_declare=True), callbacks=[on_message],
                           prefetch_count=prefetch or None, accept=["json"]):
            started = time.monotonic()
            while seen < events:
                conn.drain_events(timeout=30)
            return time.monotonic() - started


def glance_gets(log: Path, offset: int, ids: set[str]) -> Counter[str]:
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return Counter(m for m in GET_IMAGE.findall(text) if m in ids)


def one_run(stack: Stack, ids: list[str], events: int, seed: int, extra: str,
            intake_only: bool = False) -> dict[str, Any]:
    vhost = f"intake-{uuid.uuid4().hex[:8]}"
    url = rabbit.add_vhost(stack, vhost)
    pool = "warmer-bench"
    try:
        conf = load_conf(stack, url, pool, extra)
        with kombu.Connection(amqp(url)) as conn:
            kombu.Queue("bare", kombu.Exchange("openstack", "topic", durable=False),
                        routing_key="notifications.info", durable=False)(conn).declare()
        service = Service(conf)
        # Declare warmer's own queue and bindings, as the daemon does.
        listener = BusListener(conf, Bridge(asyncio.new_event_loop(), service.engine.fold,
                                            service.metrics, max_payload_bytes=1 << 20,
                                            handoff_timeout=1.0))
        listener.start()
        listener.stop()
        publish(url, ids, events, seed)
        while depth(url, pool) < events or depth(url, "bare") < events:
            time.sleep(0.2)
        prefetch = getattr(conf.oslo_messaging_rabbit, "rabbit_qos_prefetch_count", 0)
        log = stack.dir / "log" / "glance-uwsgi.log"
        offset = log.stat().st_size
        warmer_s, outcomes = asyncio.run(run_warmer(service, events, intake_only))
        gets = glance_gets(log, offset, set(ids))
        service.close_ceph()
        bare_s = run_bare(url, "bare", events, prefetch)
    finally:
        rabbit.ctl(stack, "delete_vhost", vhost)
    return {"warmer": events / warmer_s, "bare": events / bare_s,
            "ratio": bare_s / warmer_s, "outcomes": outcomes,
            "gets_total": sum(gets.values()), "gets_max": max(gets.values(), default=0),
            "images_read": len(gets)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", required=True, help="a running tools/stack directory")
    parser.add_argument("--images", default="1000,10000")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--conf", default="", help="extra config lines for warmer")
    parser.add_argument("--intake-only", action="store_true",
                        help="a sink that only counts: no engine, no Glance reads")
    args = parser.parse_args()
    stack = Stack.load(args.stack)
    results: dict[int, list[dict[str, Any]]] = {}
    for count in [int(n) for n in args.images.split(",")]:
        ids = images(stack, count)
        for n in range(args.repeat):
            r = one_run(stack, ids, args.events, seed=n, extra=args.conf.replace("\\n", "\n"),
                        intake_only=args.intake_only)
            results.setdefault(count, []).append(r)
            print(f"{count:6} images, run {n + 1}: warmer {r['warmer']:7.0f} msg/s, "
                  f"bare kombu {r['bare']:7.0f} msg/s, ratio {r['ratio']:.2f}; "
                  f"Glance GETs {r['gets_total']} for {r['images_read']} images "
                  f"(max {r['gets_max']} per image); outcomes "
                  f"{ {k: int(v) for k, v in r['outcomes'].items()} }", flush=True)
    print("\nmedians:")
    for count, runs in results.items():
        print(f"{count:6} images: warmer {statistics.median(r['warmer'] for r in runs):7.0f} "
              f"msg/s, bare {statistics.median(r['bare'] for r in runs):7.0f} msg/s, "
              f"ratio {statistics.median(r['ratio'] for r in runs):.2f} "
              f"(min {min(r['ratio'] for r in runs):.2f}, "
              f"max {max(r['ratio'] for r in runs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
