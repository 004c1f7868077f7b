"""A private RabbitMQ node on loopback.

The node, its epmd and its Erlang distribution port all listen on
127.0.0.1 on ports chosen here, never the defaults, so that a broker that
already runs on the machine is left alone. We start epmd ourselves (in the
foreground) so that its PID is recorded like every other process.

The node's environment is kept in ``DIR/rabbitmq/node-env.json``, so that
:func:`stop` and :func:`start_again` can take the node down and bring it
back with the same port, node name and data directory (durable queues and
persistent messages survive), and :func:`ctl` can run ``rabbitmqctl``
against it. The node is always stopped by its recorded PID, never by name.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from pathlib import Path

from . import proc

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
USER = "stack"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start(base: Path) -> dict[str, str]:
    home = base / "rabbitmq"
    home.mkdir(parents=True)
    amqp_port, epmd_port, dist_port = (proc.free_port() for _ in range(3))
    password = secrets.token_hex(8)
    node = f"warmer-{secrets.token_hex(3)}@localhost"
    (home / "enabled_plugins").write_text("[].\n")
    (home / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = 127.0.0.1:{amqp_port}\n"
        f"default_user = {USER}\n"
        f"default_pass = {password}\n"
        "loopback_users = none\n"
        "log.console = false\n"
        "log.file.level = info\n")
    env = {
        "HOME": str(home),  # holds the private .erlang.cookie
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        # Exec the VM directly (no signal-proxy shell), so the recorded PID
        # is the broker itself.
        "RUNNING_UNDER_SYSTEMD": "true",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
            "-kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CTL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(home / "rabbitmq.pid"),
    }
    (home / ENV_FILE).write_text(json.dumps(env, indent=2) + "\n")
    epmd = proc.spawn(base, "epmd", ["epmd", "-address", "127.0.0.1",
                                     "-port", str(epmd_port)], env=env)
    proc.wait_for("epmd", lambda: _port_open(epmd_port), 10,
                  alive=lambda: proc.pid_alive(epmd))
    _start_node(base, env)
    return {
        "TRANSPORT_URL": f"rabbit://{USER}:{password}@127.0.0.1:{amqp_port}/",
        "RABBITMQ_PORT": str(amqp_port),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_HOME": str(home),
        "RABBITMQ_EPMD_PORT": str(epmd_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
    }


ENV_FILE = "node-env.json"
NAME = "rabbitmq"


def _node_env(base: Path) -> dict[str, str]:
    env: dict[str, str] = json.loads((base / "rabbitmq" / ENV_FILE).read_text())
    return env


def _start_node(base: Path, env: dict[str, str]) -> int:
    port = int(env["RABBITMQ_NODE_PORT"])
    pid = proc.spawn(base, NAME, [str(RABBIT_BIN / "rabbitmq-server")],
                     env=env, cwd=Path(env["HOME"]))
    proc.wait_for("rabbitmq", lambda: _port_open(port), 60,
                  alive=lambda: proc.pid_alive(pid))
    ctl(base, "await_startup", "--timeout", "60")
    return pid


def ctl(base: Path, *args: str) -> str:
    """Run ``rabbitmqctl`` against the stack's node; return its output."""
    env = _node_env(base)
    return proc.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", env["RABBITMQ_NODENAME"],
                     *args], env=env)


def stop(base: Path, *, kill: bool = False, timeout: float = 60) -> float:
    """Stop the stack's node by its recorded PID: SIGTERM (a clean
    shutdown: clients are told, durable queues are saved) or, with
    ``kill``, SIGKILL (a crash). Returns the seconds it took until the AMQP
    port was closed."""
    started = time.monotonic()
    pid = proc.recorded_pid(base, NAME)
    if pid is None:
        raise proc.StackError("rabbitmq is not running (no live recorded PID)")
    os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    port = int(_node_env(base)["RABBITMQ_NODE_PORT"])
    proc.wait_for("rabbitmq to stop", lambda: not proc.pid_alive(pid) and not _port_open(port),
                  timeout)
    proc.forget(base, NAME, pid)
    return time.monotonic() - started


def start_again(base: Path) -> float:
    """Start the node that :func:`stop` stopped, with the same port, node
    name and data directory; record its new PID. Returns the seconds until
    it accepted connections and finished booting."""
    started = time.monotonic()
    if proc.recorded_pid(base, NAME) is not None:
        raise proc.StackError("rabbitmq is already running")
    _start_node(base, _node_env(base))
    return time.monotonic() - started
