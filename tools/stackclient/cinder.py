"""Cinder-shaped notifications, sent by a real oslo.messaging Notifier.

The shapes follow DESIGN.md §3: exchange ``openstack`` (Cinder never sets
its own), topic ``notifications``, publisher ``volume.<host>@<backend>#<pool>``
for ``volume.create.end``, and ``glance_metadata`` as a list of DB rows.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from typing import Any

import oslo_messaging
from oslo_config import cfg

HOST = "cinder-volume-1"
BACKEND = "ceph"


class CinderNotifier:
    """Publishes as Cinder does (exchange ``openstack``). ``durable`` stands
    for ``[oslo_messaging_rabbit] amqp_durable_queues = true``: the exchange and
    the default queue are then declared durable (they must match how the
    listeners declared them) and messages are persistent (kombu's default
    delivery mode), so a broker restart keeps what it had queued.

    Every notification is published with publisher confirms (the rabbit
    driver always asks for them) and retried until the broker confirms it
    (``[oslo_messaging_notifications] retry = -1``, the default): it blocks
    while the broker is down, and a publish whose confirm was lost is sent
    again (a duplicate, with the same volume id)."""

    def __init__(self, transport_url: str, *, host: str = HOST, backend: str = BACKEND,
                 durable: bool = False) -> None:
        # The rabbit driver registers its options when the transport is
        # made; a config file sets them before that, as cinder.conf would.
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
            f.write(f"[oslo_messaging_rabbit]\namqp_durable_queues = {durable}\n")
            f.flush()
            self.conf = cfg.ConfigOpts()
            self.conf(["--config-file", f.name], project="cinder-stand-in")
            self.transport = oslo_messaging.get_notification_transport(
                self.conf, url=transport_url)
        self.host = f"{host}@{backend}#{backend}"
        self._volume = oslo_messaging.Notifier(
            self.transport, publisher_id=f"volume.{self.host}", driver="messagingv2",
            topics=["notifications"])
        self._cache = oslo_messaging.Notifier(
            self.transport, publisher_id=f"volume.{host}", driver="messagingv2",
            topics=["notifications"])

    def close(self) -> None:
        self.transport.cleanup()

    def volume_created(self, image: dict[str, Any] | None, *,
                       volume_id: str | None = None, size_gb: int = 1) -> str:
        volume_id = volume_id or str(uuid.uuid4())
        self._volume.info({}, "volume.create.end",
                          volume_payload(volume_id, self.host, image, size_gb))
        return volume_id

    def cache_event(self, kind: str, image_id: str) -> None:
        self._cache.info({}, f"image_volume_cache.{kind}",
                         {"image_id": image_id, "host": self.host})


def volume_payload(volume_id: str, host: str, image: dict[str, Any] | None,
                   size_gb: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    rows: list[dict[str, Any]] = []
    if image is not None:
        meta = {"image_id": image["id"], "image_name": image.get("name") or "",
                "checksum": image.get("checksum") or "",
                "container_format": image.get("container_format") or "bare",
                "disk_format": image.get("disk_format") or "raw",
                "min_disk": str(image.get("min_disk", 0)),
                "min_ram": str(image.get("min_ram", 0)),
                "size": str(image.get("size") or 0)}
        rows = [{"id": n + 1, "volume_id": volume_id, "snapshot_id": None, "key": k,
                 "value": v, "deleted": False, "deleted_at": None, "created_at": now,
                 "updated_at": None} for n, (k, v) in enumerate(meta.items())]
    return {
        "tenant_id": "stack-project", "user_id": "stack-admin", "host": host,
        "availability_zone": "nova", "volume_id": volume_id,
        "volume_type": str(uuid.uuid4()), "display_name": f"vol-{volume_id[:8]}",
        "status": "available", "size": size_gb, "created_at": now, "launched_at": now,
        "snapshot_id": None, "replication_status": None, "replication_extended_status": None,
        "replication_driver_data": None, "metadata": [], "volume_attachment": [],
        "glance_metadata": rows,
    }


class GlanceNotifier:
    """Glance-shaped notifications (exchange ``glance``), for replaying
    duplicates and reorderings that a real Glance would only produce by
    accident."""

    def __init__(self, transport_url: str, host: str = "glance-api-1") -> None:
        # control_exchange is registered by oslo.messaging when the transport
        # is made; a config file sets it before that, as glance-api.conf would.
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
            f.write("[DEFAULT]\ncontrol_exchange = glance\n")
            f.flush()
            self.conf = cfg.ConfigOpts()
            self.conf(["--config-file", f.name], project="glance-stand-in")
        self.transport = oslo_messaging.get_notification_transport(self.conf, url=transport_url)
        self._notifier = oslo_messaging.Notifier(
            self.transport, publisher_id=f"image.{host}", driver="messagingv2",
            topics=["notifications"])

    def send(self, event_type: str, image: dict[str, Any]) -> None:
        self._notifier.info({}, event_type, image)

    def close(self) -> None:
        self.transport.cleanup()
