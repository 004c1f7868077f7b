"""The Glance client when things fail: keystoneauth calls are bounded, and
no token, password or credential header ends up in a message."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import multidict
import pytest
import yarl
from aiohttp import web
from aiohttp.client_reqrep import RequestInfo

from tests.unit.test_glance_client import PASSWORD, conf_for
from warmer.glance import auth as glance_auth
from warmer.glance.auth import GlanceAuth
from warmer.glance.client import GlanceClient, GlanceUnavailable
from warmer.glance.redact import redact

SECRET = "gAAAAABsecret-token-value"


@pytest.mark.parametrize("text", [
    f"headers=<CIMultiDictProxy('Host': 'glance', 'X-Auth-Token': '{SECRET}')>",
    f"X-Auth-Token: {SECRET}\r\nAccept: */*",
    f'{{"X-Subject-Token": "{SECRET}", "a": 1}}',
    f"Authorization: Bearer {SECRET}",
    f"'authorization': 'Bearer {SECRET}'",
    f"Cookie: session={SECRET}; other=1",
    f'{{"auth": {{"identity": {{"password": {{"user": {{"password": "{SECRET}"}}}}}}}}}}',
    f"connect to http://warmer:{SECRET}@keystone:5000/v3 failed",
    f"x-service-token={SECRET}",
])
def test_redact_masks_credentials_in_any_shape(text: str) -> None:
    out = redact(text)
    assert SECRET not in out
    assert "***" in out


def test_redact_keeps_what_is_not_a_credential() -> None:
    text = ("GET /v2/images/3f1c: ServerDisconnectedError('Server disconnected') "
            "cannot get a token for Glance: Unauthorized('nope (HTTP 401)')")
    assert redact(text) == text


def response_error(headers: dict[str, str]) -> aiohttp.ClientResponseError:
    """What aiohttp raises for a failed response: its repr carries the
    request's headers, token included."""
    url = yarl.URL("http://glance:9292/v2/images/img-1")
    info = RequestInfo(url, "GET", multidict.CIMultiDictProxy(multidict.CIMultiDict(headers)),
                       url)
    return aiohttp.ClientResponseError(info, (), status=502, message="Bad Gateway")


class TokenAuth:
    """A GlanceAuth stand-in that hands out SECRET, or fails like
    keystoneauth can, with request details in the exception."""

    timeout = 5.0
    ssl = True

    def __init__(self, fail: BaseException | None = None,
                 endpoint_fail: BaseException | None = None) -> None:
        self.fail, self.endpoint_fail = fail, endpoint_fail

    async def endpoint(self) -> str:
        if self.endpoint_fail is not None:
            raise self.endpoint_fail
        return "http://glance:9292"

    async def headers(self) -> dict[str, str]:
        if self.fail is not None:
            raise self.fail
        return {"X-Auth-Token": SECRET}

    def invalidate(self) -> None:
        pass


class FailingSession:
    """An aiohttp session whose every request fails with the request's own
    headers in the exception, as raise_for_status would."""

    def request(self, method: str, url: str, headers: dict[str, str],
                **kwargs: Any) -> Any:
        @contextlib.asynccontextmanager
        async def failing() -> AsyncIterator[None]:
            raise response_error(headers)
            yield
        return failing()

    async def close(self) -> None:
        pass


def glance_error(auth: TokenAuth) -> str:
    client = GlanceClient(auth=auth)  # type: ignore[arg-type]
    client._session = FailingSession()  # type: ignore[assignment]
    with pytest.raises(GlanceUnavailable) as caught:
        asyncio.run(client.get_image("img-1"))
    return str(caught.value)


def test_a_failed_request_names_the_request_but_not_the_token() -> None:
    message = glance_error(TokenAuth())
    assert "GET /v2/images/img-1" in message and "502" in message
    assert SECRET not in message


def test_a_failed_token_request_does_not_leak_its_details() -> None:
    keystone_error = RuntimeError(
        f"POST http://keystone/v3/auth/tokens: {{'password': '{SECRET}'}}, "
        f"headers {{'X-Auth-Token': '{SECRET}'}}")
    message = glance_error(TokenAuth(fail=keystone_error))
    assert message.startswith("cannot get a token for Glance")
    assert SECRET not in message


def test_a_failed_catalog_lookup_does_not_leak_a_password_in_a_url() -> None:
    message = glance_error(TokenAuth(endpoint_fail=OSError(
        f"cannot reach http://warmer:{SECRET}@keystone:5000/v3")))
    assert message.startswith("cannot find Glance's endpoint")
    assert SECRET not in message


def test_keystone_calls_are_bounded_by_the_session_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Keystone that accepts the connection and never answers: without a
    session timeout, keystoneauth would wait forever (its ``timeout``
    option defaults to none)."""
    monkeypatch.setattr(glance_auth, "DEFAULT_TIMEOUT", 1)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(status=500)

    async def scenario() -> float:
        app = web.Application()
        app.router.add_post("/v3/auth/tokens", hang)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        opts = {k: v.replace("BASE", base) for k, v in PASSWORD.items()}
        conf = conf_for(opts)
        client = GlanceClient(conf.glance.endpoint, auth=GlanceAuth(conf))
        started = time.monotonic()
        try:
            with pytest.raises(GlanceUnavailable) as caught:
                await asyncio.wait_for(client.get_image("img-1"), 10)
            # The catalog lookup (a token request) is the first to wait.
            assert "timed out" in str(caught.value)
            return time.monotonic() - started
        finally:
            await client.close()
            await runner.cleanup()
    assert asyncio.run(scenario()) < 5
