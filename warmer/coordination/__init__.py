"""Coordination between the daemons of a fleet (leadership)."""
