"""A real glance-api from PyPI, served by uwsgi, with RBD stores.

Glance lives in its own virtualenv (cached across stacks), apart from
warmer's environment, like a separate service. It uses a sqlite database,
the ``stackauth`` paste filter instead of keystone, multiple stores (the
first RBD cluster is the default) and sends notifications (messagingv2) to
the stack's private broker.

A second glance-api, configured otherwise (another ``show_*`` setting, a
single store), can run beside it on demand (:func:`start_variant`,
``tools/stack start-glance``): the same database, Ceph clusters and broker,
its own port, recorded and stopped by its PID like every other process.
"""

from __future__ import annotations

import configparser
import io
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
HEALTHY_WITHIN = 90.0  # seconds for a glance-api to answer GET /v2/images


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


def _serve(base: Path, name: str, uwsgi: Path, code: Path, conf_dir: Path, port: int,
           log: Path) -> int:
    """Run glance-api under uwsgi on ``port`` with the glance-api.conf of
    ``conf_dir`` (the stack's paste filter is imported from ``code``),
    record it as ``name``, and wait until it answers."""
    pid = proc.spawn(base, name, [
        str(uwsgi),
        "--http-socket", f"127.0.0.1:{port}",
        "--module", "glance.wsgi.api:application",
        "--pythonpath", str(code),
        "--master", "--processes", "1", "--threads", "8",
        "--enable-threads", "--lazy-apps", "--need-app", "--die-on-term",
        "--http-chunked-input", "--http-auto-chunked",
        "--buffer-size", "65535",
    ], env={"OS_GLANCE_CONFIG_DIR": str(conf_dir)}, log=log)
    proc.wait_for(name, lambda: _healthy(port), HEALTHY_WITHIN,
                  alive=lambda: proc.pid_alive(pid))
    return pid


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

    _serve(base, "glance-api", venv / "bin" / "uwsgi", gdir, gdir, port,
           base / "log" / "glance-uwsgi.log")
    return {"GLANCE_URL": f"http://127.0.0.1:{port}",
            "GLANCE_CONF": str(gdir / "glance-api.conf"),
            "GLANCE_DEFAULT_STORE": default_store,
            "GLANCE_FILE_STORE": FILE_STORE,
            # The user the stackauth filter makes of every request (warmer's too).
            "GLANCE_USER_ID": "stack-admin"}


# -- a second glance-api, configured otherwise (doctor tests) -------------------

VARIANT = "glance-api-"  # + the variant's name: its line in DIR/pids
# What a store section of the stack's glance-api.conf holds that a
# single-store Glance takes in [glance_store].
_STORE_OPTIONS = ("rbd_store_pool", "rbd_store_user", "rbd_store_ceph_conf",
                  "rbd_store_chunk_size", "rbd_thin_provisioning")


def variant_conf(conf: str, port: int, log: Path, options: dict[str, dict[str, str]],
                 single_store: str | None = None) -> str:
    """The stack's glance-api.conf (``conf``, its text) for another
    glance-api on ``port`` logging to ``log``: the same database, Ceph
    clusters and broker, with ``options`` (section -> option -> value) set
    over it. ``single_store`` names one of its RBD stores: that Glance then
    has it as its only store, configured the classic way (``[glance_store]
    stores``/``default_store``, no ``enabled_backends``), as Ceph's
    OpenStack guide configures Glance."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.read_string(conf)
    endpoint = f"http://127.0.0.1:{port}"
    defaults = {"public_endpoint": endpoint, "worker_self_reference_url": endpoint,
                "log_file": str(log)}
    for key, value in defaults.items():
        parser.set("DEFAULT", key, value)
    if single_store is not None:
        store = {key: parser.get(single_store, key) for key in _STORE_OPTIONS}
        backends = parser.get("DEFAULT", "enabled_backends").split(",")
        parser.remove_option("DEFAULT", "enabled_backends")
        for backend in backends:
            parser.remove_section(backend.split(":")[0])
        parser.remove_section("glance_store")
        # Where a single-store Glance stages imports (not /tmp/staging).
        staging = parser.get("os_glance_staging_store", "filesystem_store_datadir")
        parser.set("DEFAULT", "node_staging_uri", f"file://{staging}")
        parser.read_dict({"glance_store": {"stores": "rbd", "default_store": "rbd", **store}})
    parser.read_dict(options)
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


def start_variant(base: Path, name: str, options: dict[str, dict[str, str]] | None = None,
                  single_store: str | None = None) -> str:
    """Start a second glance-api on the stack, configured as
    :func:`variant_conf` says, on its own free port, recorded as
    ``glance-api-NAME`` (``down`` stops it by its PID, as it does every
    other process); returns its URL. The stack's own Glance is left as it
    is. Both serve the same sqlite database: a variant is meant for reads
    (what another configuration shows of the same images)."""
    if not name.replace("-", "").isalnum():
        raise proc.StackError(f"a Glance variant's name is letters, digits and '-': {name!r}")
    if proc.recorded_pid(base, VARIANT + name) is not None:
        raise proc.StackError(f"{VARIANT + name} runs already; stop it first")
    stop_variant(base, name)  # a record of one that died: its leftovers, then the record
    main = json.loads((base / proc.CMDS_DIR / "glance-api.json").read_text())
    uwsgi, gdir = Path(main["argv"][0]), Path(main["env"]["OS_GLANCE_CONFIG_DIR"])
    vdir = base / f"glance-{name}"
    vdir.mkdir(exist_ok=True)
    port = proc.free_port()
    (vdir / "glance-api.conf").write_text(variant_conf(
        (gdir / "glance-api.conf").read_text(), port,
        base / "log" / f"{VARIANT + name}.log", options or {}, single_store))
    try:
        _serve(base, VARIANT + name, uwsgi, gdir, vdir, port,
               base / "log" / f"{VARIANT + name}-uwsgi.log")
    except BaseException:
        # Launched but never healthy (or interrupted): stop what it started,
        # workers too, by PID, so that a failed start leaves nothing running.
        stop_variant(base, name)
        raise
    return f"http://127.0.0.1:{port}"


def stop_variant(base: Path, name: str) -> list[int]:
    """Stop the variant ``name``, uwsgi's master by its recorded PID and
    then what is left of its process group (its workers, orphaned if the
    master had to be SIGKILLed: they would keep the port), and forget it,
    so that a variant of that name can be started again. Returns the PIDs
    stopped (none when it did not run); raises when one survives."""
    try:
        pids = proc.stop_group(base, VARIANT + name)
    except proc.StackError:
        if not any(n == VARIANT + name for n, _, _ in proc.recorded(base)):
            return []  # never started
        raise
    for rec_name, rec_pid, _ in proc.recorded(base):
        if rec_name == VARIANT + name:
            proc.forget(base, rec_name, rec_pid)
    return pids
