"""Entry point for oslo-config-generator (``oslo.config.opts`` = warmer)."""

from __future__ import annotations

from typing import Any

from warmer.conf import bus, glance, http, leader, popularity, service, state, targets, warming


def list_opts() -> list[tuple[Any, list[Any]]]:
    result: list[tuple[Any, list[Any]]] = []
    for module in (service, targets, bus, glance, http, popularity, warming, state, leader):
        result.extend(module.list_opts())
    return result
