"""``warmer``: the operator's CLI, a thin client of the daemon's admin API.

  warmer [--config-file FILE] status      every tracked image, one line each
  warmer [--config-file FILE] show IMAGE_ID
                                          one image, in full (JSON)
  warmer [--config-file FILE] evaluate IMAGE_ID
                                          ask the daemon to evaluate it now
  warmer [--config-file FILE] doctor [IMAGE_ID] [--target T] [--cinder-conf F]
                                          why Cinder will (not) clone it; runs in
                                          this process (warmer.doctor.command)
  warmer [--config-file FILE] warm IMAGE_ID [--target T] [--wait]
  warmer [--config-file FILE] pin IMAGE_ID | unpin IMAGE_ID
  warmer [--config-file FILE] evict IMAGE_ID --target T
                                          the operator's commands (warmer/cmd/ops.py)

The daemon is found from its own config file, the way OpenStack CLIs do:
--config-file (repeatable; default: oslo.config's search, which ends at
/etc/warmer/warmer.conf). Its [http] admin_socket is used when that socket
exists; otherwise [http] host:port over TCP, with [http] admin_token as
the bearer token. --url (TCP) and --token override what the file says.
Reading the config file and the admin socket needs the daemon's group.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg

from warmer.cmd import ops
from warmer.conf import http as http_opts
from warmer.doctor import command as doctor_command

WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class CliError(Exception):
    """One line for stderr, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix stream socket (the daemon's admin socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon is: a unix socket path, or a TCP host and port."""

    socket_path: str | None = None
    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = 9797
    token: str | None = None
    timeout: float = 10.0

    def __str__(self) -> str:
        if self.socket_path:
            return f"the admin socket {self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def call(self, path: str, method: str = "GET") -> Any:
        if self.socket_path:
            conn: http.client.HTTPConnection = UnixHTTPConnection(self.socket_path,
                                                                  self.timeout)
        elif self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        if self.token and not self.socket_path:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            try:
                conn.request(method, path, body=b"" if method == "POST" else None,
                             headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except PermissionError as exc:
                raise CliError(f"cannot open {self}: {exc.strerror} (the daemon's group "
                               "may use it)", 2) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise CliError(f"cannot reach the daemon at {self}: {exc}", 2) from exc
        finally:
            conn.close()
        if resp.status >= 400:
            text = body.decode("utf-8", "replace").strip().splitlines()
            raise CliError(f"{resp.status} {text[0] if text else resp.reason}", 1)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise CliError(f"{self} answered {resp.status} with a body that is not "
                           "JSON", 1) from exc


def _read_config(files: list[str], dirs: list[str]) -> Any:
    """``[http]`` from warmer's own config files (oslo.config's search when
    none are given)."""
    conf = cfg.ConfigOpts()
    http_opts.register_opts(conf)
    args = [a for f in files for a in ("--config-file", f)]
    args += [a for d in dirs for a in ("--config-dir", d)]
    try:
        conf(args, project="warmer", prog="warmer")
        return conf.http
    except cfg.ConfigFilesNotFoundError as exc:
        raise CliError(f"config file not found: {', '.join(exc.config_files)}", 2) from exc
    except cfg.ConfigFilesPermissionDeniedError as exc:
        raise CliError(f"cannot read config file {', '.join(exc.config_files)}: permission "
                       "denied (the daemon's group may read it)", 2) from exc
    except (cfg.Error, ValueError) as exc:
        raise CliError(f"bad configuration: {str(exc).splitlines()[0]}", 2) from exc


def endpoint(args: argparse.Namespace) -> Endpoint:
    """Where to send requests: --url, else the admin socket when it exists,
    else TCP to [http] host:port; the token is --token, else [http]
    admin_token (sent over TCP only)."""
    opts = _read_config(args.config_file or [], args.config_dir or [])
    try:
        token = args.token or opts.admin_token or None
        if args.url:
            url = urllib.parse.urlsplit(args.url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise CliError(f"--url must be http://HOST:PORT, not {args.url!r}", 2)
            # The config's token goes only to the config's own daemon; to any
            # other --url, only a token given on purpose (--token).
            own = (url.hostname in (opts.host, WILDCARD.get(opts.host, opts.host))
                   and (url.port or 80) == opts.port)
            return Endpoint(scheme=url.scheme, host=url.hostname,
                            port=url.port or (443 if url.scheme == "https" else 80),
                            token=args.token or (token if own else None))
        if opts.admin_socket and os.path.exists(opts.admin_socket):
            return Endpoint(socket_path=opts.admin_socket)
        return Endpoint(host=WILDCARD.get(opts.host, opts.host), port=opts.port, token=token)
    except (cfg.Error, ValueError) as exc:  # option values are checked when read
        raise CliError(f"bad configuration: {str(exc).splitlines()[0]}", 2) from exc


def _all_images(daemon: Endpoint) -> list[dict[str, Any]]:
    """Every tracked image, page by page (GET /v1/images?marker=)."""
    images: list[dict[str, Any]] = []
    marker: str | None = ""
    while marker is not None:
        page = daemon.call(f"/v1/images?marker={urllib.parse.quote(marker, safe='')}")
        images += page["images"]
        marker = page.get("next")
    return images


def _status_lines(images: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'IMAGE':36}  {'FORMAT':6}  {'SCORE':>7}  {'WANTED':25}  TARGET STATES"]
    for img in images:
        wanted = ("yes: " if img["wanted"] else "no: ") + img["why"]
        states = ops.target_states(img)  # copies under way as progress bars
        lines.append(f"{img['id']:36}  {img['disk_format'] or '?':6}  {img['score']:7.2f}  "
                     f"{wanted:25}  {states}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warmer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", action="append", metavar="PATH",
                        help="warmer's config file (repeatable); default: "
                             "/etc/warmer/warmer.conf and oslo.config's other places")
    parser.add_argument("--config-dir", action="append", metavar="DIR",
                        help="a directory of *.conf files, read after --config-file")
    parser.add_argument("--url", help="the daemon's TCP endpoint, e.g. http://127.0.0.1:9797 "
                                      "(default: from the config file)")
    parser.add_argument("--token", help="bearer token for TCP (default: [http] admin_token; "
                                        "on the command line, other users can see it)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="every tracked image, one line each")
    sub.add_parser("show", help="one image, in full (JSON)").add_argument("image_id")
    sub.add_parser("evaluate", help="evaluate an image now").add_argument("image_id")
    doctor_command.add_parser(sub)
    ops.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor_command.run(args)
    try:
        daemon = endpoint(args)
        if args.command in ops.COMMANDS:
            return ops.run(args, daemon)
        if args.command == "status":
            print("\n".join(_status_lines(_all_images(daemon))))
            summary = daemon.call("/v1/status").get("summary")
            if summary:
                print(f"-- {summary}")
        else:
            path = f"/v1/images/{urllib.parse.quote(args.image_id, safe='')}"
            if args.command == "show":
                print(json.dumps(daemon.call(path), indent=2))
            else:
                print(json.dumps(daemon.call(f"{path}/evaluate", "POST")))
    except (CliError, ops.OpsFailure) as exc:
        print(f"warmer: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
