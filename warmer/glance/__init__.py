"""Glance API access."""
