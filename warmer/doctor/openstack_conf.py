"""What the doctor reads of Cinder's and Glance's own config files.

Only the few options that decide cloning, read with configparser the way
oslo.config reads an ini file (no interpolation; a backend's section
falls back on ``[backend_defaults]``, then ``[DEFAULT]``, as Cinder's
``Configuration`` does):

* cinder.conf: ``enabled_backends``; per RBD backend ``volume_driver``,
  ``rbd_user``, ``rbd_ceph_conf``, ``rbd_pool``; and whether ``[glance]``
  holds service credentials (``auth_type``), without which Cinder cannot
  read Glance's locations API and falls back on ``GET /v2/images/{id}``.
* glance-api.conf: ``enabled_backends`` and, per RBD store,
  ``rbd_store_user``, ``rbd_store_ceph_conf``, ``rbd_store_pool``: the user
  Glance opens (and deletes) locations with.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass

RBD_DRIVER = "cinder.volume.drivers.rbd.RBDDriver"


class ConfError(Exception):
    """The file cannot be read or is not an ini file."""


@dataclass(frozen=True)
class CinderBackend:
    name: str
    driver: str
    user: str  # rbd_user; Cinder's driver falls back on "cinder"
    ceph_conf: str  # rbd_ceph_conf; "" is librados' default search
    pool: str

    @property
    def is_rbd(self) -> bool:
        return self.driver.endswith("RBDDriver")


@dataclass(frozen=True)
class CinderConf:
    path: str
    backends: tuple[CinderBackend, ...]
    glance_service_auth: bool  # [glance] auth_type is set


@dataclass(frozen=True)
class GlanceStoreConf:
    name: str
    type: str
    user: str | None = None
    ceph_conf: str | None = None
    pool: str | None = None


def _read(path: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise ConfError(f"cannot read {path}: {exc.strerror}") from exc
    except configparser.Error as exc:
        raise ConfError(f"{path}: {str(exc).splitlines()[0]}") from exc
    return parser


def _get(parser: configparser.RawConfigParser, sections: list[str], key: str,
         default: str) -> str:
    for section in sections:
        if parser.has_section(section) and parser.has_option(section, key):
            return parser.get(section, key).strip()
    return parser.defaults().get(key, default).strip()


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def read_cinder_conf(path: str) -> CinderConf:
    parser = _read(path)
    backends = []
    for name in _list(parser.defaults().get("enabled_backends", "")):
        chain = [name, "backend_defaults"]
        backends.append(CinderBackend(
            name, _get(parser, chain, "volume_driver", ""),
            _get(parser, chain, "rbd_user", "") or "cinder",
            _get(parser, chain, "rbd_ceph_conf", ""),
            _get(parser, chain, "rbd_pool", "rbd")))
    auth = parser.has_section("glance") and bool(parser.get("glance", "auth_type",
                                                            fallback="").strip())
    return CinderConf(path, tuple(backends), auth)


def read_glance_conf(path: str) -> dict[str, GlanceStoreConf]:
    """Glance's stores by id, from ``enabled_backends = id:type,...``."""
    parser = _read(path)
    stores = {}
    for item in _list(parser.defaults().get("enabled_backends", "")):
        name, _, kind = item.partition(":")
        name, kind = name.strip(), kind.strip()
        if kind != "rbd":
            stores[name] = GlanceStoreConf(name, kind)
            continue
        stores[name] = GlanceStoreConf(
            name, kind, _get(parser, [name], "rbd_store_user", "") or None,
            _get(parser, [name], "rbd_store_ceph_conf", "") or None,
            _get(parser, [name], "rbd_store_pool", "images"))
    return stores
