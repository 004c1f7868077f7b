"""Ceph access: the typed surface of rados/rbd warmer uses, and the client."""
