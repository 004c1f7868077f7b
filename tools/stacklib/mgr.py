"""A ceph-mgr for one of the stack's clusters, started on demand.

Without a mgr, the mons get no pool statistics, so pool quotas are never
enforced and ``ceph df`` shows nothing. Tests that need a full pool start
one (``tools/stack start-mgr DIR CLUSTER``); it is recorded like every
other daemon, so ``tools/stack down`` stops it by its PID.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import proc


def start(base: Path, cluster: str) -> int:
    env = json.loads((base / "env.json").read_text())
    prefix = f"CEPH_{cluster.upper()}_"
    conf, admin = env[prefix + "CONF"], env[prefix + "KEYRING_ADMIN"]
    data = base / f"ceph-{cluster}" / "mgr" / "ceph-x"
    data.mkdir(parents=True, exist_ok=True)
    ceph = ["ceph", "--conf", conf, "--name", "client.admin", "--keyring", admin]
    # Only the statistics are wanted: the mgr must not re-shape the pools
    # (pg_autoscaler) nor create its own (devicehealth).
    proc.run([*ceph, "config", "set", "mgr", "mgr/devicehealth/enable_monitoring", "false",
              "--force"])  # a module option the mon learns only from a running mgr
    for pool in json.loads(proc.run([*ceph, "osd", "pool", "ls", "--format", "json"])):
        proc.run([*ceph, "osd", "pool", "set", pool, "pg_autoscale_mode", "off"])
    (data / "keyring").write_text(proc.run([
        *ceph, "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr",
        "osd", "allow *", "mds", "allow *"]))
    pid = proc.spawn(base, f"ceph-{cluster}-mgr", [
        "ceph-mgr", "--conf", conf, "--id", "x", "-f", "--mgr-data", str(data),
        "--keyring", str(data / "keyring")])

    def available() -> bool:
        return bool(json.loads(proc.run([*ceph, "mgr", "stat", "--format", "json"]))
                    .get("available"))
    proc.wait_for(f"ceph {cluster} mgr", available, 60, alive=lambda: proc.pid_alive(pid))
    return pid
