"""A real glance-api from PyPI, served by uwsgi, with RBD stores.

Glance lives in its own virtualenv (cached across stacks), apart from
warmer's environment, like a separate service. It uses a sqlite database,
the ``stackauth`` paste filter instead of keystone, multiple stores (the
first RBD cluster is the default) and sends notifications (messagingv2) to
the stack's private broker.
"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

from . import proc
from .ceph import Cluster
from .venv import ensure_venv

GLANCE_VERSION = "33.0.0"
FILE_STORE = "local"
FILES = Path(__file__).parent / "glance_files"


def _conf(base: Path, port: int, transport_url: str,
          clusters: list[Cluster], default_store: str) -> str:
    gdir = base / "glance"
    backends = ",".join([*(f"{c.name}:rbd" for c in clusters), f"{FILE_STORE}:file"])
    stores = "".join(f"""
[{c.name}]
store_description = Ceph cluster {c.name} (fsid {c.fsid})
rbd_store_pool = images
rbd_store_user = glance
rbd_store_ceph_conf = {c.conf}
rbd_store_chunk_size = 8
rbd_thin_provisioning = True
""" for c in clusters)
    return f"""[DEFAULT]
enabled_backends = {backends}
show_image_direct_url = True
show_multiple_locations = True
transport_url = {transport_url}
public_endpoint = http://127.0.0.1:{port}
worker_self_reference_url = http://127.0.0.1:{port}
image_cache_dir = {gdir}/cache
log_file = {base}/log/glance-api.log
debug = False

[glance_store]
default_backend = {default_store}
{stores}
[{FILE_STORE}]
store_description = Local files (not cloneable: warmer copies these over HTTP)
filesystem_store_datadir = {gdir}/images

[os_glance_staging_store]
filesystem_store_datadir = {gdir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {gdir}/tasks

[database]
# sqlite serialises writers; wait for the lock rather than fail with 500.
connection = sqlite:///{gdir}/glance.sqlite?timeout=30

[oslo_messaging_notifications]
driver = messagingv2

[oslo_concurrency]
lock_path = {gdir}/locks

[paste_deploy]
flavor = stackauth
config_file = {gdir}/glance-api-paste.ini
"""


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/images",
                                    timeout=5) as resp:
            json.load(resp)
            return resp.status == 200
    except (OSError, ValueError):
        return False


def start(base: Path, cache: Path, transport_url: str,
          clusters: list[Cluster], default_store: str | None = None) -> dict[str, str]:
    """Start Glance; its default store is the first cluster unless
    ``default_store`` names another (``local``: the file store)."""
    default_store = default_store or clusters[0].name
    venv = ensure_venv(cache / f"glance-{GLANCE_VERSION}",
                       [f"glance=={GLANCE_VERSION}", "uwsgi"])
    gdir = base / "glance"
    for sub in ("staging", "tasks", "locks", "cache", "images"):
        (gdir / sub).mkdir(parents=True)
    shutil.copy(FILES / "glance-api-paste.ini", gdir)
    shutil.copy(FILES / "stack_auth.py", gdir)
    port = proc.free_port()
    (gdir / "glance-api.conf").write_text(
        _conf(base, port, transport_url, clusters, default_store))

    # db_sync runs the whole migration history; do it once per cache and
    # copy the pristine database afterwards.
    pristine = venv / "pristine-glance.sqlite"
    if not pristine.exists():
        proc.run([str(venv / "bin" / "glance-manage"), "--config-file",
                  str(gdir / "glance-api.conf"), "db_sync"], timeout=300)
        shutil.copy(gdir / "glance.sqlite", pristine)
    else:
        shutil.copy(pristine, gdir / "glance.sqlite")

    env = {"OS_GLANCE_CONFIG_DIR": str(gdir)}
    pid = proc.spawn(base, "glance-api", [
        str(venv / "bin" / "uwsgi"),
        "--http-socket", f"127.0.0.1:{port}",
        "--module", "glance.wsgi.api:application",
        "--pythonpath", str(gdir),
        "--master", "--processes", "1", "--threads", "8",
        "--enable-threads", "--lazy-apps", "--need-app", "--die-on-term",
        "--http-chunked-input", "--http-auto-chunked",
        "--buffer-size", "65535",
    ], env=env, log=base / "log" / "glance-uwsgi.log")
    proc.wait_for("glance-api", lambda: _healthy(port), 90,
                  alive=lambda: proc.pid_alive(pid))
    return {"GLANCE_URL": f"http://127.0.0.1:{port}",
            "GLANCE_CONF": str(gdir / "glance-api.conf"),
            "GLANCE_DEFAULT_STORE": default_store,
            "GLANCE_FILE_STORE": FILE_STORE,
            # The user the stackauth filter makes of every request (warmer's too).
            "GLANCE_USER_ID": "stack-admin"}
