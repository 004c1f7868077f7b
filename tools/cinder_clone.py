"""Ask Cinder's own RBD driver to clone a Glance image, as its create-volume
flow does (``RBDDriver.clone_image``), and print the result as JSON.

Runs in Cinder's virtualenv (``tools/stack cinder-venv``), not warmer's:
this is the real driver code from PyPI, configured for one cluster of the
local stack as ``client.cinder``, given the locations Glance returns.

  cinder-venv/bin/python tools/cinder_clone.py --ceph-conf C --glance-url U IMAGE_ID
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
import uuid
import warnings
from typing import Any

warnings.filterwarnings("ignore")


BACKEND = "stackrbd"  # the driver's config group, and the backend of its host


def stack_rbd_driver(ceph_conf: str, user: str, pool: str) -> tuple[Any, Any]:
    """Cinder's RBDDriver for one cluster of the local stack, set up as
    cinder-volume would (``do_setup``), with an admin context. Cinder's
    config must be initialised (``cfg.CONF(...)``) first."""
    from cinder import context
    from cinder.volume import configuration
    from cinder.volume.drivers import rbd as rbd_driver
    from oslo_config import cfg

    config = configuration.Configuration(rbd_driver.RBD_OPTS, config_group=BACKEND)
    for key, value in (("rbd_ceph_conf", ceph_conf), ("rbd_user", user), ("rbd_pool", pool)):
        cfg.CONF.set_override(key, value, group=BACKEND)
    driver = rbd_driver.RBDDriver(configuration=config, host=f"stack@{BACKEND}")
    ctx = context.get_admin_context()
    driver.do_setup(ctx)
    return driver, ctx


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ceph-conf", required=True)
    p.add_argument("--glance-url", required=True)
    p.add_argument("--user", default="cinder")
    p.add_argument("--pool", default="volumes")
    p.add_argument("--size-gb", type=int, default=1)
    p.add_argument("image_id")
    args = p.parse_args()

    from cinder import objects
    from oslo_config import cfg

    objects.register_all()
    cfg.CONF([], project="cinder", default_config_files=[])
    driver, ctx = stack_rbd_driver(args.ceph_conf, args.user, args.pool)

    with urllib.request.urlopen(f"{args.glance_url}/v2/images/{args.image_id}") as resp:
        image = json.load(resp)
    # What Cinder's glance client hands the driver: (direct_url, locations).
    image_location = (image.get("direct_url"), image.get("locations") or [])
    volume = objects.Volume(ctx, id=str(uuid.uuid4()), size=args.size_gb,
                            volume_type=None, volume_type_id=None, encryption_key_id=None,
                            _name_id=None)
    started = time.monotonic()
    update, cloned = driver.clone_image(ctx, volume, image_location, image, None)
    print(json.dumps({"cloned": cloned, "volume": volume.name if cloned else None,
                      "seconds": time.monotonic() - started,
                      "locations": [loc["url"] for loc in image_location[1]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
