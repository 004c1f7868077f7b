"""The notification bus."""
