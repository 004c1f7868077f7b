"""The Glance client's keystoneauth1 path, against a small Keystone v3 and
Glance served by aiohttp on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from typing import Any

from aiohttp import web
from oslo_config import cfg

from warmer.conf import glance as glance_conf
from warmer.glance.auth import GlanceAuth
from warmer.glance.client import GlanceClient

IMAGE_ID = "0b7e5c3a-2f41-4d8e-9c6b-1a2b3c4d5e6f"
IMAGE = {"id": IMAGE_ID, "status": "active", "disk_format": "raw", "size": 1,
         "locations": [{"url": f"rbd://f/images/{IMAGE_ID}/snap", "metadata": {"store": "c"}}]}


class FakeCloud:
    def __init__(self) -> None:
        self.tokens_issued = 0
        self.seen_tokens: list[str | None] = []
        self.reject_first = False
        self.base = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v3/auth/tokens", self.issue)
        app.router.add_get("/glance/v2/images/{id}", self.image)
        return app

    async def issue(self, request: web.Request) -> web.Response:
        self.tokens_issued += 1
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M:%S.000000Z")
        body = {"token": {
            "methods": ["password"], "expires_at": expires,
            "issued_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "user": {"id": "u", "name": "warmer", "domain": {"id": "default", "name": "d"}},
            "project": {"id": "p", "name": "service", "domain": {"id": "default", "name": "d"}},
            "roles": [{"id": "r", "name": "service"}],
            "catalog": [{"type": "image", "name": "glance", "id": "s", "endpoints": [
                {"interface": "internal", "region": "RegionOne", "region_id": "RegionOne",
                 "url": f"{self.base}/glance", "id": "e"}]}]}}
        return web.json_response(body, status=201,
                                 headers={"X-Subject-Token": f"tok-{self.tokens_issued}"})

    async def image(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token")
        self.seen_tokens.append(token)
        if self.reject_first and len(self.seen_tokens) == 1:
            return web.Response(status=401)
        return web.json_response(IMAGE)


def conf_for(options: dict[str, str]) -> cfg.ConfigOpts:
    """A config file with a [glance] group, read as the daemon reads its own."""
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write("[glance]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
        f.flush()
        conf = cfg.ConfigOpts()
        glance_conf.register_opts(conf)
        conf(["--config-file", f.name])
        conf.glance.keys()
        if "auth_type" in options:
            GlanceAuth(conf)  # registers the plugin's options while the file exists
    return conf


async def with_cloud(cloud: FakeCloud, options: dict[str, str]) -> Any:
    runner = web.AppRunner(cloud.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    cloud.base = f"http://127.0.0.1:{port}"
    opts = {k: v.replace("BASE", cloud.base) for k, v in options.items()}
    conf = conf_for(opts)
    client = GlanceClient(conf.glance.endpoint, auth=GlanceAuth(conf))
    try:
        return await client.get_image(IMAGE_ID)
    finally:
        await client.close()
        await runner.cleanup()


PASSWORD = {"auth_type": "v3password", "auth_url": "BASE/v3", "username": "warmer",
            "password": "secret", "project_name": "service", "user_domain_id": "default",
            "project_domain_id": "default"}


def test_password_auth_finds_glance_in_the_catalog_and_sends_the_token() -> None:
    cloud = FakeCloud()
    image = asyncio.run(with_cloud(cloud, PASSWORD))
    assert image is not None and image.info.id == IMAGE_ID
    assert cloud.seen_tokens == ["tok-1"]


def test_a_401_gets_a_new_token_and_one_retry() -> None:
    cloud = FakeCloud()
    cloud.reject_first = True
    image = asyncio.run(with_cloud(cloud, PASSWORD))
    assert image is not None
    assert cloud.seen_tokens == ["tok-1", "tok-2"] and cloud.tokens_issued == 2


def test_plain_endpoint_without_auth_sends_no_token() -> None:
    cloud = FakeCloud()
    image = asyncio.run(with_cloud(cloud, {"endpoint": "BASE/glance"}))
    assert image is not None and cloud.seen_tokens == [None] and cloud.tokens_issued == 0


def test_neither_endpoint_nor_auth_is_a_config_error() -> None:
    conf = conf_for({})
    try:
        GlanceAuth(conf)
    except cfg.RequiredOptError as exc:
        assert "endpoint" in str(exc)
    else:
        raise AssertionError("expected RequiredOptError")


def test_user_id_of_the_keystone_session_is_known_for_invariant_9() -> None:
    async def scenario() -> str | None:
        cloud = FakeCloud()
        runner = web.AppRunner(cloud.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        cloud.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        conf = conf_for({k: v.replace("BASE", cloud.base) for k, v in PASSWORD.items()})
        try:
            return await GlanceAuth(conf).user_id()
        finally:
            await runner.cleanup()
    assert asyncio.run(scenario()) == "u"


def test_user_id_without_auth_is_none() -> None:
    conf = conf_for({"endpoint": "http://127.0.0.1:9/glance"})
    assert asyncio.run(GlanceAuth(conf).user_id()) is None


def test_user_id_when_keystone_does_not_answer_is_none_not_an_error() -> None:
    options = {**PASSWORD, "auth_url": "http://127.0.0.1:9/v3", "timeout": "2"}
    conf = conf_for(options)
    assert asyncio.run(GlanceAuth(conf).user_id()) is None
