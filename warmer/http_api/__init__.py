"""The HTTP surface: metrics, health, admin API."""
