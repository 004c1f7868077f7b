"""keystoneauth1 for the Glance client: tokens, endpoint, TLS.

keystoneauth1 is synchronous; its calls (token fetch, catalog lookup) run
in a thread, and the plugin caches the token until it nears expiry, so that
costs a round trip only when a token is (re)issued. Those calls are bounded
by the session's timeout (``[glance] timeout``, default 30 s), like every
request to Glance. Tokens are never logged: error messages about Glance go
through :mod:`warmer.glance.redact`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from warmer.conf.glance import DEFAULT_TIMEOUT

LOG = logging.getLogger(__name__)


class GlanceAuth:
    def __init__(self, conf: cfg.ConfigOpts, group: str = "glance") -> None:
        section = conf[group]
        # keystoneauth's own ``timeout`` option defaults to none (wait
        # forever): token and catalog requests get the same bound as
        # warmer's requests to Glance.
        self.timeout = float(section.timeout or DEFAULT_TIMEOUT)
        self._auth: Any = ks_loading.load_auth_from_conf_options(conf, group)
        self._session: Any = ks_loading.load_session_from_conf_options(
            conf, group, auth=self._auth, timeout=self.timeout)
        self._endpoint: str | None = section.endpoint
        self._lookup = {"service_type": section.service_type,
                        "interface": section.interface,
                        "region_name": section.region_name}
        if self._auth is None and not self._endpoint:
            raise cfg.RequiredOptError("endpoint", cfg.OptGroup(group))
        self.ssl = _ssl_context(section.cafile, section.insecure)

    @property
    def authenticated(self) -> bool:
        return self._auth is not None

    async def endpoint(self) -> str:
        if self._endpoint:
            return self._endpoint.rstrip("/")
        found = await asyncio.to_thread(self._session.get_endpoint, **self._lookup)
        if not found:
            raise LookupError(f"no {self._lookup['service_type']} endpoint in the catalog")
        return str(found).rstrip("/")

    async def headers(self) -> dict[str, str]:
        if self._auth is None:
            return {}
        token = await asyncio.to_thread(self._session.get_token)
        return {"X-Auth-Token": str(token)}

    async def user_id(self) -> str | None:
        """The Keystone user id warmer's session acts as, so that warmer can
        tell its own downloads from demand (invariant 9). Best effort: None
        without auth, for a plugin that has no user (e.g. an admin token),
        or when Keystone cannot be asked now; it never raises. Costs a
        token request only when no valid token is cached."""
        if self._auth is None:
            return None
        try:
            found = await asyncio.to_thread(self._auth.get_user_id, self._session)
        except Exception as exc:  # keystoneauth raises many kinds; all mean "not now"
            LOG.info("cannot tell warmer's own Keystone user id yet: %s", exc)
            return None
        return str(found) if found else None

    def invalidate(self) -> None:
        """After a 401: drop the cached token so the next call gets a new one."""
        if self._auth is not None:
            self._auth.invalidate()


def _ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure:
        return False
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    return True
