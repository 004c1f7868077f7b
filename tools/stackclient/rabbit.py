"""The stack's RabbitMQ node, for tests that take it down: stop and start it
by its recorded PID (``tools/stack stop-rabbit`` / ``start-rabbit``, never
by name), and ``rabbitmqctl`` against it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stackclient import Stack

ROOT = Path(__file__).resolve().parents[2]


def _stack_tool(stack: Stack, action: str, *args: str) -> str:
    res = subprocess.run([str(ROOT / "tools" / "stack"), action, str(stack.dir), *args],
                         capture_output=True, text=True, timeout=180)
    if res.returncode != 0:
        raise RuntimeError(f"tools/stack {action} failed ({res.returncode}):\n"
                           f"{res.stdout}{res.stderr}")
    return res.stdout


def stop(stack: Stack, *, kill: bool = False) -> None:
    """SIGTERM (a clean shutdown) or SIGKILL (a crash) to the recorded PID."""
    _stack_tool(stack, "stop-rabbit", *(["--kill"] if kill else []))


def start(stack: Stack) -> None:
    """Start it again on the same port, with the same node name and data."""
    _stack_tool(stack, "start-rabbit")


def running(stack: Stack) -> bool:
    out = subprocess.run([str(ROOT / "tools" / "stack"), "status", str(stack.dir)],
                         capture_output=True, text=True).stdout
    return any(line.split()[:1] == ["rabbitmq"] and line.split()[-1] == "running"
               for line in out.splitlines())


def ctl(stack: Stack, *args: str) -> str:
    return _stack_tool(stack, "rabbitmqctl", *args)


def add_vhost(stack: Stack, vhost: str) -> str:
    """Create ``vhost`` (if needed) for the stack's user; return its
    transport URL."""
    if vhost not in ctl(stack, "list_vhosts", "--quiet", "--no-table-headers").split():
        ctl(stack, "add_vhost", vhost)
    ctl(stack, "set_permissions", "-p", vhost, "stack", ".*", ".*", ".*")
    return stack["TRANSPORT_URL"].rstrip("/") + "/" + vhost


def queues(stack: Stack, vhost: str) -> dict[str, dict[str, str]]:
    """``{name: {"durable": "true"|"false", "type": "classic"|"quorum"|...,
    "messages": "N"}}`` (messages: ready and not yet acked)."""
    out = ctl(stack, "list_queues", "-p", vhost, "--quiet", "--no-table-headers",
              "name", "durable", "type", "messages")
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {r[0]: {"durable": r[1], "type": r[2], "messages": r[3]}
            for r in rows if len(r) >= 4}
