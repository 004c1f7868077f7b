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
    "messages": "N", "messages_unacknowledged": "N"}}`` (messages: ready and
    not yet acked)."""
    columns = ("name", "durable", "type", "messages", "messages_unacknowledged")
    return {row["name"]: row for row in _rows(stack, "list_queues", columns, vhost)}


def consumers(stack: Stack, queue: str, vhost: str = "/") -> list[dict[str, str]]:
    """The consumers of ``queue``, each with what the broker knows of its
    channel: ``channel_pid`` (the broker's process for the channel: a channel
    closed and opened again, even with the same number on the same
    connection, is another one), ``connection`` (the connection's process),
    ``number`` (the channel's number on it), ``name`` (``"CLIENT:PORT ->
    SERVER:PORT (NUMBER)"``, as the broker's log names it),
    ``prefetch_count`` (the consumer's ``basic.qos`` limit; 0: none) and
    ``messages_unacknowledged`` (the channel's)."""
    found = [row for row in _rows(stack, "list_consumers",
                                  ("queue_name", "channel_pid", "consumer_tag",
                                   "prefetch_count"), vhost)
             if row["queue_name"] == queue]
    channels = {row["pid"]: row for row in _rows(
        stack, "list_channels", ("pid", "connection", "number", "messages_unacknowledged",
                                 "name"))}
    for row in found:
        channel = channels.get(row["channel_pid"], {})
        row.update({k: channel.get(k, "") for k in ("connection", "number", "name",
                                                    "messages_unacknowledged")})
    return found


def _rows(stack: Stack, command: str, columns: tuple[str, ...],
          vhost: str | None = None) -> list[dict[str, str]]:
    """``rabbitmqctl COMMAND COLUMNS`` as one dict per row (the last column
    may hold spaces, no other)."""
    out = ctl(stack, command, *(["-p", vhost] if vhost is not None else []), "--quiet",
              "--no-table-headers", *columns)
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return [dict(zip(columns, r, strict=True)) for r in rows if len(r) == len(columns)]


def log(stack: Stack) -> Path:
    """The node's log file (``[info]`` and above)."""
    return stack.dir / "log" / f"{stack['RABBITMQ_NODENAME']}.log"


def channel_errors(stack: Stack, connection: str, since: int = 0) -> list[str]:
    """What the node logged, from byte ``since`` of its log, of each channel
    exception on the connection whose channel name is ``connection``
    (``"CLIENT:PORT -> SERVER:PORT"``): one ``"operation OP caused a channel
    exception ..."`` each."""
    with open(log(stack), "rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    found = []
    for n, line in enumerate(lines):
        if "Channel error on connection" in line and f"({connection}," in line:
            found += [_message(later) for later in lines[n + 1:n + 3]
                      if "caused a channel exception" in later]
    return found


def _message(line: str) -> str:
    return line[line.index("operation"):] if "operation" in line else line
