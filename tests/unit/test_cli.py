"""The ``warmer`` CLI finds the daemon from warmer's config file: the admin
socket when it exists, else TCP with the token. A real daemon HTTP surface
(engine with fakes) runs on its own loop in a thread."""

from __future__ import annotations

import asyncio
import builtins
import json
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_http_api import TOKEN, build_engine, http_opts
from warmer.cmd import cli
from warmer.http_api.server import HttpSurface, serve
from warmer.warming.engine import Engine


@dataclass
class Running:
    engine: Engine
    surface: HttpSurface
    dir: Path

    @property
    def socket(self) -> str:
        assert self.surface.socket_path
        return self.surface.socket_path

    def conf(self, text: str) -> str:
        path = self.dir / f"warmer-{uuid.uuid4().hex[:6]}.conf"
        path.write_text(text)
        return str(path)


@pytest.fixture
def daemon() -> Iterator[Running]:
    base = Path(tempfile.mkdtemp(prefix="wc-", dir="/tmp"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine = build_engine()
    surface = asyncio.run_coroutine_threadsafe(
        serve(http_opts(base, metrics_port=None), engine, engine.metrics, lambda: {},
              lambda: 0.0), loop).result(10)
    try:
        yield Running(engine, surface, base)
    finally:
        asyncio.run_coroutine_threadsafe(surface.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        shutil.rmtree(base, ignore_errors=True)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_file_with_admin_socket_is_used(daemon: Running,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # The TCP port in the file is wrong on purpose: the socket is what is used.
    conf = daemon.conf(f"[http]\nadmin_socket = {daemon.socket}\nport = 1\n")
    image_id = str(uuid.uuid4())
    code, out, err = run_cli(capsys, "--config-file", conf, "evaluate", image_id)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"queued": image_id}
    code, out, err = run_cli(capsys, "--config-file", conf, "status")
    assert code == 0 and out.startswith("IMAGE") and err == ""


def test_without_the_socket_tcp_and_the_token_from_the_config_are_used(
        daemon: Running, capsys: pytest.CaptureFixture[str]) -> None:
    conf = daemon.conf(f"[http]\nadmin_socket = {daemon.dir}/absent.sock\n"
                       f"host = 0.0.0.0\nport = {daemon.surface.port}\n"
                       f"admin_token = {TOKEN}\n")
    code, out, err = run_cli(capsys, "--config-file", conf, "evaluate", str(uuid.uuid4()))
    assert (code, err) == (0, "")
    assert daemon.engine.scheduler.depth() == 1


def test_url_and_token_override_the_config(daemon: Running,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    conf = daemon.conf(f"[http]\nadmin_socket = {daemon.socket}\nadmin_token = stale\n")
    url = f"http://127.0.0.1:{daemon.surface.port}"
    code, _, err = run_cli(capsys, "--config-file", conf, "--url", url, "evaluate",
                           str(uuid.uuid4()))
    # The config's token is for the config's own daemon: not sent to a
    # --url elsewhere.
    assert code == 1 and err.startswith("warmer: 403 a bearer token is required")
    code, _, err = run_cli(capsys, "--config-file", conf, "--url", url, "--token", TOKEN,
                           "evaluate", str(uuid.uuid4()))
    assert (code, err) == (0, "")


@pytest.mark.parametrize("argv, code, message", [
    (["--url", "URL", "evaluate", str(uuid.uuid4())], 1,
     "warmer: 403 a bearer token is required"),
    (["--url", "URL", "--token", TOKEN, "show", "Not-A-UUID"], 1,
     "warmer: 400 invalid image id: expected a canonical UUID"),
    (["--url", "URL", "--token", TOKEN, "show", str(uuid.uuid4())], 1,
     "warmer: 404 image not tracked"),
    (["--url", "http://127.0.0.1:1", "status"], 2,
     "warmer: cannot reach the daemon at http://127.0.0.1:1: [Errno 111] Connection refused"),
    (["--url", "ftp://x", "status"], 2, "warmer: --url must be http://HOST:PORT"),
    (["--config-file", "/nonexistent/warmer.conf", "status"], 2,
     "warmer: config file not found: /nonexistent/warmer.conf"),
])
def test_errors_are_one_line_on_stderr(daemon: Running, capsys: pytest.CaptureFixture[str],
                                       argv: list[str], code: int, message: str) -> None:
    url = f"http://127.0.0.1:{daemon.surface.port}"
    if "--config-file" not in argv:  # the default search must not find a real config
        argv = ["--config-file", daemon.conf("[http]\nadmin_socket =\n"), *argv]
    got, out, err = run_cli(capsys, *[url if a == "URL" else a for a in argv])
    assert got == code and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_a_config_file_it_may_not_read_is_a_clear_error(
        daemon: Running, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    conf = daemon.conf("[http]\n")
    real_open = builtins.open

    def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
        # What a non-member of the daemon's group gets (tests run as root).
        if str(file) == conf:
            raise PermissionError(13, "Permission denied", conf)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    code, out, err = run_cli(capsys, "--config-file", conf, "status")
    assert code == 2 and out == ""
    assert err == f"warmer: cannot read config file {conf}: permission denied " \
                  "(the daemon's group may read it)\n"


@pytest.mark.parametrize("text", ["no section header\n", "[http]\nport = not-a-port\n"])
def test_a_bad_config_file_is_one_line(daemon: Running, capsys: pytest.CaptureFixture[str],
                                       text: str) -> None:
    code, out, err = run_cli(capsys, "--config-file", daemon.conf(text), "status")
    assert code == 2 and out == ""
    assert err.startswith("warmer: bad configuration: ") and err.count("\n") == 1, err


def test_the_admin_socket_carries_no_token(daemon: Running,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []
    original = cli.UnixHTTPConnection.request

    def spy(self: Any, method: str, url: str, body: Any = None,
            headers: Any = None, **kw: Any) -> None:
        sent.append(dict(headers or {}))
        original(self, method, url, body=body, headers=headers or {}, **kw)

    monkeypatch.setattr(cli.UnixHTTPConnection, "request", spy)
    conf = daemon.conf(f"[http]\nadmin_socket = {daemon.socket}\nadmin_token = {TOKEN}\n")
    assert run_cli(capsys, "--config-file", conf, "status")[0] == 0
    assert sent and all("Authorization" not in h for h in sent)


def test_a_socket_it_may_not_open_is_a_clear_error(daemon: Running,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Any) -> None:  # what a non-member of the daemon's group gets
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.UnixHTTPConnection, "connect", denied)
    conf = daemon.conf(f"[http]\nadmin_socket = {daemon.socket}\n")
    code, out, err = run_cli(capsys, "--config-file", conf, "status")
    assert (code, out) == (2, "")
    assert err == (f"warmer: cannot open the admin socket {daemon.socket}: Permission denied "
                   "(the daemon's group may use it)\n")
