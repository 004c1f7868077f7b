"""Drive the local stack the way OpenStack services would, for the demo and
the functional tests: Glance's REST API, Cinder-shaped notifications sent
by a real oslo.messaging Notifier, and RBD set-up as Glance's user.

Runs in warmer's venv (it needs oslo.messaging and the rados bindings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stack:
    """What ``tools/stack up DIR`` wrote to ``DIR/env.json``."""

    env: dict[str, str]

    @classmethod
    def load(cls, base: str | os.PathLike[str]) -> Stack:
        return cls(json.loads(Path(base, "env.json").read_text()))

    def __getitem__(self, key: str) -> str:
        return self.env[key]

    @property
    def dir(self) -> Path:
        return Path(self.env["STACK_DIR"])

    def ceph_conf(self, cluster: str = "central") -> str:
        return self.env[f"CEPH_{cluster.upper()}_CONF"]

    def keyring(self, user: str, cluster: str = "central") -> str:
        return self.env[f"CEPH_{cluster.upper()}_KEYRING_{user.upper()}"]

    def fsid(self, cluster: str = "central") -> str:
        return self.env[f"CEPH_{cluster.upper()}_FSID"]
