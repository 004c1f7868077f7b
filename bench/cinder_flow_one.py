"""Create volumes from one Glance image with Cinder's own create-from-image
flow, and print one JSON line per run: which path Cinder took (clone or
download), the seconds of the whole flow and of each step.

Runs in Cinder's virtualenv (``tools/stack cinder-venv``), like
tools/cinder_clone.py: Cinder 29.0.0 from PyPI, its RBD driver configured
for one cluster of the local stack as ``client.cinder``, and Cinder's own
Glance image service (``cinder.image.glance.GlanceImageService``, glanceclient
over HTTP; ``auth_strategy = noauth``, since the stack has no Keystone).

What runs is the volume manager's task method
``CreateVolumeFromSpecTask._create_from_image`` (cinder/volume/flows/manager/
create_volume.py), which asks ``RBDDriver.clone_image`` first and, when that
says False, downloads: ``image_utils.TemporaryImages.fetch`` (HTTP GET of the
image to a temp file, ``qemu-img info``), ``RBDDriver.create_volume``, then
``volume_utils.copy_image_to_volume`` -> ``RBDDriver.copy_image_to_volume``
(``image_utils.fetch_to_raw``: ``qemu-img convert`` to a second temp file;
``rbd import``; resize). Nothing of that is emulated. Emulated: the database.
The task writes volume rows and image metadata rows through ``self.db`` and
``Volume.save()``; here those are no-ops (counted), because there is no
Cinder database. Not included: the API, scheduler and RPC hops before the
volume manager runs the task, and the taskflow engine around it.

Each step is timed by wrapping the Cinder function it calls (the functions
themselves are unchanged). After each run the volume is deleted with the
driver's ``delete_volume``.

  cinder-venv/bin/python bench/cinder_flow_one.py --ceph-conf C --glance-url U \
      --conversion-dir D --size-gb N --runs 3 --expect download|clone IMAGE_ID
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")


class GlanceRetries(logging.Handler):
    """Counts the retries Cinder's Glance client logs ("Error contacting
    glance server ..., retrying."): each one sleeps a second first."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.count += 1


class NoDatabase:
    """Stands in for ``cinder.db``: every call is a counted no-op."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append(name)
        return call


def timed(steps: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            steps[name] = steps.get(name, 0.0) + time.monotonic() - started
    return wrapper


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ceph-conf", required=True)
    p.add_argument("--glance-url", required=True)
    p.add_argument("--conversion-dir", required=True)
    p.add_argument("--user", default="cinder")
    p.add_argument("--pool", default="volumes")
    p.add_argument("--size-gb", type=int, required=True)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--expect", choices=("clone", "download"), required=True)
    p.add_argument("image_id")
    args = p.parse_args()

    # image_utils before cinder.image.glance: the other order is a circular
    # import (cinder's own modules import image_utils first).
    from cinder.image import image_utils  # isort: skip
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from cinder import objects
    from cinder.image import glance as cinder_glance
    from cinder_clone import BACKEND, stack_rbd_driver  # set up as tools/cinder_clone.py does
    from oslo_config import cfg

    objects.register_all()
    # Only now: the flow's annotations name objects.Volume.
    from cinder.volume.flows.manager import create_volume as flow
    glance = urllib.parse.urlsplit(args.glance_url)
    cfg.CONF([], project="cinder", default_config_files=[])
    for key, value in (("auth_strategy", "noauth"),
                       ("glance_api_servers", [f"http://{glance.netloc}"]),
                       ("image_conversion_dir", args.conversion_dir),
                       ("state_path", args.conversion_dir)):
        cfg.CONF.set_override(key, value)
    # Cinder's privileged helper (qemu-img info runs the format inspector
    # through it): the virtualenv's privsep-helper, without sudo (as root).
    cfg.CONF.set_override("helper_command", str(Path(sys.executable).parent / "privsep-helper"),
                          group="cinder_sys_admin")
    driver, ctx = stack_rbd_driver(args.ceph_conf, args.user, args.pool)

    steps: dict[str, float] = {}
    for name in ("clone_image", "create_volume", "copy_image_to_volume", "_resize"):
        setattr(driver, name, timed(steps, name, getattr(driver, name)))
    driver._try_execute = timed(steps, "rbd import", driver._try_execute)
    for name, label in (("fetch", "download (HTTP)"), ("qemu_img_info", "qemu-img info"),
                        ("convert_image", "qemu-img convert")):
        setattr(image_utils, name, timed(steps, label, getattr(image_utils, name)))
    saves: list[str] = []
    objects.Volume.save = lambda self: saves.append(self.id)  # no database

    image_service = cinder_glance.GlanceImageService()
    retries = GlanceRetries()
    logging.getLogger("cinder.image.glance").addHandler(retries)
    for n in range(args.runs):
        steps.clear()
        saves.clear()
        retries.count = 0
        db = NoDatabase()
        task = flow.CreateVolumeFromSpecTask(manager=None, db=db, driver=driver)
        volume = objects.Volume(ctx, id=str(uuid.uuid4()), size=args.size_gb,
                                volume_type=None, volume_type_id=None,
                                encryption_key_id=None, _name_id=None,
                                host=f"stack@{BACKEND}#{BACKEND}", cluster_name=None,
                                bootable=False, status="creating", group_id=None,
                                consistencygroup_id=None, use_quota=True)
        started = time.monotonic()
        # What the manager's flow hands the task (ExtractVolumeRefTask and
        # the API's image lookup): Cinder's image service's metadata and
        # (direct_url, locations).
        image_meta = image_service.show(ctx, args.image_id)
        image_location = image_service.get_location(ctx, args.image_id)
        lookup = time.monotonic() - started
        task._create_from_image(ctx, volume, image_location, args.image_id, image_meta,
                                image_service)
        seconds = time.monotonic() - started
        path = "download" if "copy_image_to_volume" in steps else "clone"
        driver.delete_volume(volume)
        print(json.dumps({
            "run": n + 1, "path": path, "seconds": seconds,
            "clone_image_seconds": steps.get("clone_image", 0.0),
            "image_lookup_seconds": lookup, "glance_retries": retries.count,
            "steps": dict(steps), "db_calls_skipped": len(db.calls) + len(saves),
            "volume": volume.name}), flush=True)
        if path != args.expect:
            print(f"expected {args.expect}, Cinder took {path}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
