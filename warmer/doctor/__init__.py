"""``warmer doctor [ID]``: why Cinder's ``clone_image`` will or will not
clone an image in each target, and what to do about it.

:mod:`rules` replays Cinder's location lookup and ``_is_cloneable`` over
facts; :mod:`probe` gathers those facts from Ceph and Glance (read-only);
:mod:`report` holds and prints the diagnoses; :mod:`command` is the CLI
subcommand. It runs in the CLI's process with warmer's config, not in the
daemon: see :mod:`warmer.doctor.command`.
"""
