"""A single-node Ceph cluster (one mon, one memstore OSD) with cephx on.

Each cluster lives in ``DIR/ceph-<name>/`` with its own fsid, conf, mon
port and keyrings, so the stack can run several independent clusters side
by side. Everything binds to 127.0.0.1 (``public network``), and the
daemons run in the foreground so that the PIDs recorded are theirs.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import proc

# Capabilities of the OpenStack users exactly as Ceph's OpenStack guide
# gives them (Glance: its pool only; Cinder: its pool, and read-only on
# Glance's), and warmer's least privilege (docs/cephx.md): the rbd profile
# on Glance's pool, where it repairs Glance's snapshots and keeps its copies
# (where Glance's own copy-image writes), and read-only on Cinder's pool, to
# list the clones of its copies. Never write on Cinder's pool (invariant 7).
_CAPS = {
    "glance": ["mon", "profile rbd",
               "osd", "profile rbd pool=images"],
    "cinder": ["mon", "profile rbd",
               "osd", "profile rbd pool=volumes, profile rbd-read-only pool=images"],
    "warmer": ["mon", "profile rbd",
               "osd", "profile rbd pool=images, profile rbd-read-only pool=volumes"],
}
USERS = {"central": _CAPS, "edge": _CAPS}
POOLS = ("images", "volumes")


@dataclass
class Cluster:
    name: str
    base: Path
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    mon_port: int = field(default_factory=proc.free_port)

    @property
    def dir(self) -> Path:
        return self.base / f"ceph-{self.name}"

    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    def keyring(self, user: str) -> Path:
        return self.dir / f"ceph.client.{user}.keyring"

    def ceph(self, *args: str) -> str:
        return proc.run(["ceph", "--conf", str(self.conf), "--name",
                         "client.admin", *args])


def _write_conf(c: Cluster, memstore_bytes: int) -> None:
    d = c.dir
    c.conf.write_text(f"""[global]
fsid = {c.fsid}
mon host = v2:127.0.0.1:{c.mon_port}
public network = 127.0.0.1/32
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/$cluster.$name.keyring
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.$pid.asok
log file = {d}/log/$cluster-$name.log
mon cluster log file = {d}/log/$cluster.log
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd op num shards = 2
osd op num threads per shard = 2

[mon]
# A lone test mon: commit map changes at once instead of batching them for
# a second (each self-managed snapshot id is such a change).
paxos propose interval = 0.05
""")


def start(base: Path, name: str,
          memstore_bytes: int = 6 << 30) -> tuple[Cluster, dict[str, str]]:
    c = Cluster(name, base)
    for sub in ("run", "log", "mon/ceph-a", "osd/ceph-0"):
        (c.dir / sub).mkdir(parents=True)
    _write_conf(c, memstore_bytes)
    conf = ["--conf", str(c.conf)]
    mon_keyring = c.dir / "mon.keyring"
    admin = c.keyring("admin")
    proc.run(["ceph-authtool", "--create-keyring", str(mon_keyring),
              "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])
    proc.run(["ceph-authtool", "--create-keyring", str(admin), "--gen-key",
              "-n", "client.admin", "--cap", "mon", "allow *", "--cap", "osd",
              "allow *", "--cap", "mgr", "allow *"])
    proc.run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin)])
    monmap = c.dir / "monmap"
    proc.run(["monmaptool", "--create", "--fsid", c.fsid, "--addv", "a",
              f"[v2:127.0.0.1:{c.mon_port}]", str(monmap)])
    proc.run(["ceph-mon", *conf, "--id", "a", "--mkfs", "--monmap",
              str(monmap), "--keyring", str(mon_keyring)])
    mon = proc.spawn(base, f"ceph-{name}-mon", ["ceph-mon", *conf, "--id", "a", "-f"])
    proc.wait_for(f"ceph {name} mon", lambda: _mon_up(c), 30,
                  alive=lambda: proc.pid_alive(mon))

    osd_uuid = str(uuid.uuid4())
    osd_id = c.ceph("osd", "new", osd_uuid).strip()
    osd_keyring = c.dir / "osd" / f"ceph-{osd_id}" / "keyring"
    proc.run(["ceph-osd", *conf, "--id", osd_id, "--mkfs", "--mkkey", "--no-mon-config",
              "--osd-uuid", osd_uuid, "--keyring", str(osd_keyring)])
    c.ceph("auth", "add", f"osd.{osd_id}", "-i", str(osd_keyring),
           "mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd")
    osd = proc.spawn(base, f"ceph-{name}-osd", ["ceph-osd", *conf, "--id", osd_id,
                                                "--keyring", str(osd_keyring), "-f"])
    proc.wait_for(f"ceph {name} osd", lambda: _osd_up(c), 60,
                  alive=lambda: proc.pid_alive(osd))

    for pool in POOLS:
        c.ceph("osd", "pool", "create", pool, "8")
        c.ceph("osd", "pool", "application", "enable", pool, "rbd")
        # The first write into a fresh pool waits ~2 s for its PGs here;
        # pay that now rather than in the first test or demo step.
        rados = ["rados", "--conf", str(c.conf), "--name", "client.admin", "-p", pool]
        proc.run([*rados, "put", "stack-warm-up", "/etc/hostname"])
        proc.run([*rados, "rm", "stack-warm-up"])
    users = USERS[name]
    for user, caps in users.items():
        key = c.ceph("auth", "get-or-create", f"client.{user}", *caps)
        c.keyring(user).write_text(key)
    prefix = f"CEPH_{name.upper()}_"
    env = {prefix + "CONF": str(c.conf), prefix + "FSID": c.fsid,
           prefix + "MON_PORT": str(c.mon_port)}
    for user in ("admin", *users):
        env[prefix + f"KEYRING_{user.upper()}"] = str(c.keyring(user))
    return c, env


def _mon_up(c: Cluster) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", c.mon_port), timeout=0.5):
            pass
        c.ceph("mon", "stat")
        return True
    except (OSError, proc.StackError):
        return False


def _osd_up(c: Cluster) -> bool:
    stat = json.loads(c.ceph("osd", "stat", "--format", "json"))
    return int(stat.get("num_up_osds", 0)) >= 1


# -- one daemon at a time, and quotas (fault tests) ------------------------------

_DAEMON = re.compile(r"^ceph-(?P<cluster>[a-z0-9]+)-(?P<kind>mon|osd)$")


def _cluster_of(base: Path, name: str) -> tuple[Cluster, str] | None:
    """``ceph-<cluster>-mon|osd`` -> (its cluster, ``mon`` or ``osd``)."""
    match = _DAEMON.match(name)
    if match is None:
        return None
    cluster = Cluster(match["cluster"], base)
    if not cluster.conf.exists():
        raise proc.StackError(f"{name}: no cluster {match['cluster']!r} in {base}")
    return cluster, match["kind"]


def before_stop(base: Path, name: str, pid: int) -> None:
    """Make a SIGTERM keep a daemon's data. A memstore OSD writes its store
    to disk only on a full shutdown, and Ceph's default fast shutdown skips
    it: without this, a restarted OSD would come back empty. Set through
    the daemon's own admin socket (needs no mon)."""
    found = _cluster_of(base, name)
    if found is None or found[1] != "osd":
        return
    cluster, _ = found
    asok = next((cluster.dir / "run").glob(f"ceph-osd.*.{pid}.asok"), None)
    if asok is None:
        raise proc.StackError(f"{name}: no admin socket for pid {pid} in {cluster.dir}/run")
    proc.run(["ceph", "--admin-daemon", str(asok), "config", "set",
              "osd_fast_shutdown", "false"], timeout=30)


def wait_started(base: Path, name: str, pid: int, timeout: float = 60) -> None:
    """Wait until a restarted daemon serves again: a mon answers; an OSD is
    up and every pool takes a write (its PGs are active)."""
    found = _cluster_of(base, name)
    if found is None:
        return
    cluster, kind = found
    alive = lambda: proc.pid_alive(pid)  # noqa: E731
    if kind == "mon":
        proc.wait_for(f"{name} answers", lambda: _answers(cluster), timeout, alive=alive)
        return
    proc.wait_for(f"{name} up", lambda: _answers(cluster) and _osd_up(cluster), timeout,
                  alive=alive)
    proc.wait_for(f"{name} serves every pool", lambda: all(
        _pool_writable(cluster, pool) for pool in POOLS), timeout, alive=alive)


def _answers(c: Cluster) -> bool:
    try:
        proc.run(["ceph", "--conf", str(c.conf), "--name", "client.admin",
                  "--connect-timeout", "2", "mon", "stat"], timeout=10)
        return True
    except (proc.StackError, subprocess.TimeoutExpired):
        return False


def _pool_writable(c: Cluster, pool: str) -> bool:
    rados = ["rados", "--conf", str(c.conf), "--name", "client.admin",
             "--rados-osd-op-timeout", "2", "-p", pool]
    try:
        proc.run([*rados, "put", "stack-restart-probe", "/etc/hostname"], timeout=10)
        proc.run([*rados, "rm", "stack-restart-probe"], timeout=10)
        return True
    except (proc.StackError, subprocess.TimeoutExpired):
        return False


def set_pool_quota(base: Path, cluster_name: str, pool: str, max_bytes: int) -> None:
    """``ceph osd pool set-quota POOL max_bytes N`` as client.admin; 0 clears."""
    cluster = Cluster(cluster_name, base)
    if not cluster.conf.exists():
        raise proc.StackError(f"no cluster {cluster_name!r} in {base}")
    cluster.ceph("osd", "pool", "set-quota", pool, "max_bytes", str(max_bytes))
