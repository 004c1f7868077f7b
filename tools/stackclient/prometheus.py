"""A private Prometheus (Debian's package) that scrapes warmer daemons and
evaluates the shipped alert rules, for the functional tests and demos.

It listens on 127.0.0.1 on a free port, keeps its TSDB in its own
directory, records its PID in ``DIR/prometheus.pid`` and is stopped by that
PID (SIGTERM, then SIGKILL), never by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stackclient.daemon import free_port

BINARY = "/usr/bin/prometheus"


class Prometheus:
    def __init__(self, directory: Path, scrape: list[str], *, rule_files: Sequence[Path] = (),
                 interval: float = 1.0, job: str = "warmer") -> None:
        """``scrape``: ``host:port`` of the metrics listeners to scrape as
        job ``job``, every ``interval`` seconds; rules are evaluated as often."""
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "prometheus.yml"
        every = f"{round(interval * 1000)}ms"
        self.config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": every, "evaluation_interval": every,
                       "scrape_timeout": every},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": scrape}]}],
        }, indent=2))
        self.log = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Prometheus:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [BINARY, f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir)
        (self.dir / "prometheus.pid").write_text(f"{self.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready in {timeout} s")

    def stop(self) -> None:
        """SIGTERM to the recorded PID, SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def api(self, path: str, **params: str | list[str]) -> Any:
        """GET ``/api/v1/<path>``; returns ``data``, raises on an error status
        (a query that does not parse is a 400 with ``error``)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" \
            else [{"metric": {}, "value": data["result"]}]
        return result

    def series(self, selector: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.api("series", **{"match[]": selector})
        return found


class PrometheusError(Exception):
    pass
