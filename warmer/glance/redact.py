"""Keep credentials out of messages and log lines.

Exceptions from the HTTP and auth libraries carry the request they failed
on: aiohttp's ``ClientResponseError`` repr includes the request headers
(``'X-Auth-Token': '...'``), keystoneauth1's may include URLs and request
details. Whatever turns such an exception into text that is logged, stored
in a status row or shown by the admin API goes through :func:`redact`
first (or :func:`describe` for an exception).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

# Headers and fields whose values are credentials.
_KEYS = (
    r"x-auth-token|x-subject-token|x-service-token|x-storage-token|x-auth-key|"
    r"proxy-authorization|authorization|set-cookie|cookie|"
    r"application_credential_secret|passwd|password|secret|token"
)
_FIELD = re.compile(
    rf"""(?P<key>(?<![\w-])['"]?(?:{_KEYS})['"]?\s*[:=]\s*)"""
    r"""(?:'(?P<sq>[^']*)'|"(?P<dq>(?:[^"\\]|\\.)*)"|"""
    r"""(?P<bare>(?:(?:bearer|basic|digest|negotiate|token)\s+)?[^\s,;'"}\])>]+))""",
    re.IGNORECASE)
# scheme://user:password@host
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:)[^/\s@'\"]+@",
                       re.IGNORECASE)


def _mask_field(match: re.Match[str]) -> str:
    if match["sq"] is not None:
        return f"{match['key']}'{MASK}'"
    if match["dq"] is not None:
        return f'{match["key"]}"{MASK}"'
    return f"{match['key']}{MASK}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credential values masked: sensitive headers and fields
    (quoted or not), passwords in URLs, and any of ``secrets`` verbatim."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _FIELD.sub(_mask_field, text)
    return _USERINFO.sub(rf"\g<head>{MASK}@", text)


def describe(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """``repr(exc)``, redacted: what a message may say about an exception."""
    return redact(repr(exc), secrets)
