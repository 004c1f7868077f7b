"""Virtualenvs built on Debian's python3, with the Ceph bindings visible.

The ``rados`` and ``rbd`` modules come from python3-rados / python3-rbd
and are built for Debian's interpreter, so every venv here is made from
/usr/bin/python3. Only those two modules are exposed (through a .pth
file and a private directory of symlinks), not all of dist-packages.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import sys
from pathlib import Path

from . import proc

SYSTEM_PYTHON = "/usr/bin/python3"
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
STAMP = ".stack-complete"  # holds the hash of the constraints it was built with
CONSTRAINTS = Path(__file__).resolve().parent / "constraints"


def link_ceph_bindings(venv: Path) -> None:
    links = venv / "ceph-bindings"
    links.mkdir(exist_ok=True)
    found = []
    for mod in ("rados", "rbd"):
        for so in glob.glob(str(DIST_PACKAGES / f"{mod}.cpython-*.so")):
            target = links / os.path.basename(so)
            if not target.exists():
                target.symlink_to(so)
            found.append(so)
    if len(found) < 2:
        raise proc.StackError("python3-rados / python3-rbd are not installed")
    site = proc.run([str(venv / "bin" / "python"), "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    Path(site, "ceph-bindings.pth").write_text(f"{links}\n")


def ensure_venv(path: Path, requirements: list[str]) -> Path:
    """Create (once) a venv at ``path`` with ``requirements`` installed,
    every dependency at the version of ``constraints/<venv name>.txt`` when
    there is one (tools/freeze-constraints): a new release on PyPI must not
    change the stack under the suite. A changed constraints file rebuilds."""
    constraints = CONSTRAINTS / f"{path.name}.txt"
    pins = constraints.read_text() if constraints.exists() else ""
    stamp = hashlib.sha256(pins.encode()).hexdigest()
    if (path / STAMP).exists() and (path / STAMP).read_text() == stamp:
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"stack: installing {' '.join(requirements)} into {path}",
          file=sys.stderr, flush=True)
    proc.run([SYSTEM_PYTHON, "-m", "venv", str(path)])
    proc.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
              *(["-c", str(constraints)] if pins else []), *requirements], timeout=1200)
    link_ceph_bindings(path)
    (path / STAMP).write_text(stamp)
    return path
