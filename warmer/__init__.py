"""warmer: keeps Glance RAW images cloneable for Cinder's RBD driver."""

from importlib import metadata

try:
    __version__ = metadata.version("warmer")
except metadata.PackageNotFoundError:  # running from a bare source tree
    __version__ = "0.0.0"
