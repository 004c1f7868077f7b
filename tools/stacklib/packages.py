"""Debian packages the stack needs, installed when missing."""

from __future__ import annotations

import os
import subprocess
import sys

from . import proc

PACKAGES = ["rabbitmq-server", "ceph-mon", "ceph-osd", "ceph-mgr", "ceph-common",
            "python3-rados", "python3-rbd", "python3-venv", "python3-dev",
            "gcc", "qemu-utils", "systemd",
            # use_journal in an installed warmer (tools/install links it in)
            "python3-systemd",
            # promtool and a Prometheus for the shipped alert rules and dashboard
            # (tests/unit/test_monitoring.py, tests/functional/test_prometheus.py)
            "prometheus"]


def missing() -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *PACKAGES],
        capture_output=True, text=True).stdout
    installed = {line.split()[0] for line in out.splitlines()
                 if line.endswith(" installed")}
    return [p for p in PACKAGES if p not in installed]


def ensure() -> None:
    need = missing()
    if not need:
        return
    print(f"stack: installing Debian packages: {' '.join(need)}",
          file=sys.stderr, flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    proc.run([*sudo, "apt-get", "update", "-q"], env=env, timeout=600)
    proc.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends",
              *need], env=env, timeout=1800)
