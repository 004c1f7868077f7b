"""A private RabbitMQ node on loopback.

The node, its epmd and its Erlang distribution port all listen on
127.0.0.1 on ports chosen here, never the defaults, so that a broker that
already runs on the machine is left alone. We start epmd ourselves (in the
foreground) so that its PID is recorded like every other process.
"""

from __future__ import annotations

import secrets
import socket
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
    epmd = proc.spawn(base, "epmd", ["epmd", "-address", "127.0.0.1",
                                     "-port", str(epmd_port)], env=env)
    proc.wait_for("epmd", lambda: _port_open(epmd_port), 10,
                  alive=lambda: proc.pid_alive(epmd))
    pid = proc.spawn(base, "rabbitmq", [str(RABBIT_BIN / "rabbitmq-server")],
                     env=env, cwd=home)
    proc.wait_for("rabbitmq", lambda: _port_open(amqp_port), 60,
                  alive=lambda: proc.pid_alive(pid))
    proc.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", node, "await_startup",
              "--timeout", "60"], env=env)
    return {
        "TRANSPORT_URL": f"rabbit://{USER}:{password}@127.0.0.1:{amqp_port}/",
        "RABBITMQ_PORT": str(amqp_port),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_HOME": str(home),
        "RABBITMQ_EPMD_PORT": str(epmd_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
    }
