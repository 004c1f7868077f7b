"""The ``doctor`` subcommand of the ``warmer`` CLI.

It runs here, in the CLI's process, from warmer's own config files, and
not in the daemon behind the admin API:

* it is most needed when the daemon is not healthy: not started, not
  ready, or its clusters unreachable; it needs nothing from the daemon;
* the admin API answers from memory and never calls Ceph or Glance, so
  that it cannot hang on a sick cluster; a doctor probes both, for seconds;
* it may read what the daemon must not: Cinder's and Glance's config files
  and keyrings (``--cinder-conf``, ``--glance-conf``), when the operator
  running it may (as root), to check as Cinder's and Glance's own users.

It needs what the daemon needs to read (warmer.conf, warmer's keyrings),
which the daemon's group may read (docs/install.md).

Exit status: 0 when the image clones in every target (without an image:
when nothing in the deployment blocks warming), 1 when something blocks
cloning, a target's cluster could not be checked, or the deployment is
unsafe (warmer's user may write Cinder's pool: invariant 7), 2 when the
doctor cannot run (config, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from oslo_config import cfg

from warmer import conf as warmer_conf
from warmer.doctor.openstack_conf import ConfError, read_cinder_conf, read_glance_conf
from warmer.doctor.probe import Doctor
from warmer.doctor.report import Report
from warmer.ids import InvalidId, canonical_image_id


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="why Cinder will or will not clone an image, per "
                                      "target, and what to do (runs here, not in the daemon)")
    p.add_argument("image_id", nargs="?", help="a Glance image id; without it, only the "
                                               "deployment is checked")
    p.add_argument("--target", help="check only this target (a name in enabled_targets)")
    p.add_argument("--cinder-conf", metavar="FILE",
                   help="cinder.conf: check as each RBD backend's rbd_user, and how Cinder "
                        "reads Glance's locations")
    p.add_argument("--glance-conf", metavar="FILE",
                   help="glance-api.conf: check that each store's rbd_store_user can open "
                        "warmer's copies")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    try:
        if args.image_id is not None:
            canonical_image_id(args.image_id)
        argv = [a for f in args.config_file or [] for a in ("--config-file", f)]
        argv += [a for d in args.config_dir or [] for a in ("--config-dir", d)]
        conf = warmer_conf.load(argv)
        cinder = read_cinder_conf(args.cinder_conf) if args.cinder_conf else None
        glance = read_glance_conf(args.glance_conf) if args.glance_conf else None
        doctor = Doctor(conf, cinder_conf=cinder, glance_conf=glance, only=args.target)
    except (InvalidId, ConfError, ValueError) as exc:
        print(f"warmer: doctor: {exc}", file=sys.stderr)
        return 2
    except (cfg.Error, OSError) as exc:
        print(f"warmer: doctor: bad configuration: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    # Ceph's and Glance's clients log reconnections: the report says it all.
    logging.basicConfig(level=logging.ERROR)
    report = asyncio.run(_diagnose(doctor, args.image_id))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 1 if report.blocked else 0


async def _diagnose(doctor: Doctor, image_id: str | None) -> Report:
    try:
        return await doctor.run(image_id)
    finally:
        await doctor.close()
