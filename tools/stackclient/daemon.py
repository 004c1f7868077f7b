"""Run warmer-daemon as a subprocess against the local stack, and read its
admin API and metrics. Used by the demo and the functional tests.

Each daemon gets an admin socket in the stack's directory, a random admin
token, and a separate metrics-only listener (where :meth:`Daemon.metric`
scrapes, as a remote Prometheus would)."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from stackclient import Stack

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, stack: Stack, *, pool: str | None = None, overrides: str = "",
                 name: str = "warmer", port: int | None = None,
                 env: dict[str, str] | None = None, admin_token: str | None = None,
                 state_namespace: str | None = None) -> None:
        """``admin_token``: ``[http] admin_token`` (default: a random one;
        empty: none). Daemons of one bus ``pool`` are one fleet: they share
        a ``[state]`` namespace, hence one leader and one sum of demand
        (daemons that each see every notification must not add up each
        other's); ``state_namespace`` (default: named after the pool) or
        ``overrides`` may say otherwise."""
        self.stack = stack
        self.pool = pool or f"warmer-{uuid.uuid4().hex[:8]}"
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.name = name
        self.token = secrets.token_urlsafe(24) if admin_token is None else admin_token
        self.socket = stack.dir / f"{name}-{self.pool}.sock"
        self.conf = stack.dir / f"{name}-{self.pool}.conf"
        self.state_namespace = state_namespace or self.pool
        self.conf.write_text(f"[bus]\npool = {self.pool}\n"
                             f"[state]\nnamespace = {self.state_namespace}\n"
                             f"[http]\nport = {self.port}\n"
                             f"metrics_port = {self.metrics_port}\n"
                             f"admin_socket = {self.socket}\n"
                             f"admin_token = {self.token}\n{overrides}\n")
        self.log = stack.dir / "log" / f"daemon-{name}-{self.pool}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def config_args(self) -> list[str]:
        """The daemon's ``--config-file`` arguments (the CLI takes them too)."""
        return ["--config-file", str(ROOT / "config" / "warmer-local.conf"),
                "--config-file", self.stack["WARMER_STACK_CONF"],
                "--config-file", str(self.conf)]

    def start(self, wait: bool = True) -> Daemon:
        exe = Path(sys.executable).parent / "warmer-daemon"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), *self.config_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})})
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_until(lambda: self._ready(), timeout, "daemon ready")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"warmer-daemon exited with {self.proc.returncode}; "
                               f"the end of {self.log}:\n{self.log_tail(40)}")
        try:
            return bool(self.get("/readyz")["ready"])
        except (OSError, ValueError):
            return False

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            raise

    def dump_stacks(self) -> None:
        """Append every thread's stack to the daemon's log (needs py-spy)."""
        spy = Path(sys.executable).parent / "py-spy"
        if self.proc is None or not spy.exists():
            return
        with open(self.log, "ab") as log:
            log.write(b"\n--- py-spy dump (stop timed out) ---\n")
            log.flush()
            subprocess.run([str(spy), "dump", "--pid", str(self.proc.pid)], stdout=log,
                           stderr=subprocess.STDOUT, timeout=60, check=False)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def get(self, path: str, base: str | None = None) -> Any:
        """GET over TCP; admin paths (``/v1/...``) carry the token."""
        req = urllib.request.Request((base or self.url) + path)
        if path.startswith("/v1/") and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return json.loads(body) if path != "/metrics" else body.decode()

    def request(self, method: str, path: str, *, via: str = "socket",
                token: str | None = None) -> tuple[int, str]:
        """One admin request, over the admin socket (``via="socket"``) or
        TCP (``"tcp"``, with ``token`` if given); returns status and body."""
        conn: http.client.HTTPConnection
        if via == "socket":
            conn = _UnixConnection(str(self.socket))
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            conn.request(method, path, body=b"" if method == "POST" else None,
                         headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def cli(self, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
        """The ``warmer`` CLI, finding this daemon from its config files."""
        exe = Path(sys.executable).parent / "warmer"
        return subprocess.run([str(exe), *(self.config_args if config else []), *args],
                              capture_output=True, text=True, timeout=30)

    def image(self, image_id: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.get(f"/v1/images/{image_id}")
            return result
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def target_state(self, image_id: str, target: str = "central") -> tuple[str, str] | None:
        view = self.image(image_id)
        for row in (view or {}).get("targets", []):
            if row["target"] == target:
                return row["state"], row["reason"]
        return None

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics",
                                                                self.metrics_url)):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def wait_until(self, check: Callable[[], Any], timeout: float, what: str,
                   interval: float = 0.05) -> Any:
        """Poll ``check`` until it is true; on a timeout, say what the daemon
        logged last (CI keeps no stack directory to look at afterwards, and
        shows only the end of its output: what failed comes last)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except OSError as exc:  # the daemon's API did not answer: say why
                exited = self.proc.poll() if self.proc is not None else None
                state = "running" if exited is None else f"exited with {exited}"
                raise RuntimeError(f"the end of {self.log}:\n{self.log_tail()}\n"
                                   f"{what}: {exc} (daemon {state})") from exc
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"the end of {self.log}:\n{self.log_tail()}\n"
                                   f"{what}: not after {timeout}s")
            time.sleep(interval)

    def log_tail(self, lines: int = 60) -> str:
        """The log's last ``lines``; after a crash (faulthandler's "Fatal
        Python error"), the crashing thread's stack, which comes first."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        all_lines = text.splitlines(True)
        crash = next((n for n in range(len(all_lines) - 1, -1, -1)
                      if all_lines[n].startswith("Fatal Python error")), None)
        if crash is not None:
            picked = all_lines[max(0, crash - 15):crash + 45]
        else:
            picked = all_lines[-lines:]
        return "".join(line[:400] + ("\n" if len(line) > 400 else "") for line in picked)



class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock
