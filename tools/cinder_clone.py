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

warnings.filterwarnings("ignore")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ceph-conf", required=True)
    p.add_argument("--glance-url", required=True)
    p.add_argument("--user", default="cinder")
    p.add_argument("--pool", default="volumes")
    p.add_argument("--size-gb", type=int, default=1)
    p.add_argument("image_id")
    args = p.parse_args()

    from cinder import context, objects
    from cinder.volume import configuration
    from cinder.volume.drivers import rbd as rbd_driver
    from oslo_config import cfg

    objects.register_all()
    cfg.CONF([], project="cinder", default_config_files=[])
    group = "stackrbd"
    config = configuration.Configuration(rbd_driver.RBD_OPTS, config_group=group)
    for key, value in (("rbd_ceph_conf", args.ceph_conf), ("rbd_user", args.user),
                       ("rbd_pool", args.pool)):
        cfg.CONF.set_override(key, value, group=group)
    driver = rbd_driver.RBDDriver(configuration=config, host=f"stack@{group}")
    ctx = context.get_admin_context()
    driver.do_setup(ctx)

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
