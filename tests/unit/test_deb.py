"""tools/build-deb and the maintainer scripts, without building anything
(tests/functional/test_deb.py builds the package and runs its scripts)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "packaging" / "deb"


def _build_deb() -> Any:
    loader = importlib.machinery.SourceFileLoader("warmer_build_deb", str(ROOT / "tools/build-deb"))
    spec = importlib.util.spec_from_loader("warmer_build_deb", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["preinst", "postinst", "prerm", "postrm"])
def test_maintainer_scripts_are_executable_posix_sh(name: str) -> None:
    script = SCRIPTS / name
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/bin/sh\n")
    assert "set -e\n" in script.read_text()
    res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # Every path is under $DPKG_ROOT, so the script can run against a tree.
    assert 'ROOT="${DPKG_ROOT:-}"' in script.read_text()


def test_scripts_name_what_the_package_ships() -> None:
    tool = _build_deb()
    postinst = (SCRIPTS / "postinst").read_text()
    assert f'STARTER="$ROOT{tool.STARTER}"' in postinst
    assert "systemd-sysusers warmer.conf" in postinst and tool.SYSUSERS.name == "warmer.conf"
    # Never enables or starts the service; restarts only a running one.
    for text in (postinst, (SCRIPTS / "prerm").read_text(), (SCRIPTS / "postrm").read_text()):
        code = [x for x in text.splitlines()
                if not x.strip().startswith(("#", "echo", '"')) and "systemctl" in x]
        assert not [x for x in code if "enable" in x or " start " in x or "restart " in x
                    and "try-restart" not in x], code
    assert "try-restart --no-block warmer.service" in postinst
    assert "stop warmer.service" in (SCRIPTS / "prerm").read_text()
    postrm = (SCRIPTS / "postrm").read_text()
    assert 'rm -f "$ROOT/etc/warmer/warmer.conf"' in postrm and "rm -rf" not in postrm
    assert "userdel" not in postrm.split("set -e")[1]
    assert "policy-rc.d warmer.service try-restart" in postinst


def test_unit_goes_where_debian_packages_put_units() -> None:
    tool = _build_deb()
    assert tool.UNIT_DIR == Path("/lib/systemd/system")
    assert {"python3-rados", "python3-rbd", "python3-systemd"} <= set(tool.DEPENDS)


def test_glibc_needed_is_the_newest_of_each_wheels_oldest(tmp_path: Path) -> None:
    tool = _build_deb()
    site = tmp_path / "opt/warmer/lib/python3.11/site-packages"
    wheels = {
        "a": ["cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"],
        "b": ["cp311-cp311-manylinux_2_28_x86_64"],
        "c": ["cp36-abi3-manylinux2010_x86_64", "cp36-abi3-manylinux_2_34_x86_64"],
        "d": ["py3-none-any"],
    }
    for name, tags in wheels.items():
        info = site / f"{name}-1.dist-info"
        info.mkdir(parents=True)
        (info / "WHEEL").write_text("Wheel-Version: 1.0\n" + "".join(f"Tag: {t}\n" for t in tags))
    assert tool.glibc_needed(tmp_path) == (2, 28)


def test_preinst_refuses_to_install_over_a_tools_install_tree(tmp_path: Path) -> None:
    preinst = SCRIPTS / "preinst"
    env = {"DPKG_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    fresh = subprocess.run(["sh", "-e", str(preinst), "install"], env=env,
                           capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    daemon = tmp_path / "opt" / "warmer" / "bin" / "warmer-daemon"
    daemon.parent.mkdir(parents=True)
    daemon.write_text("#!/bin/sh\n")
    over = subprocess.run(["sh", "-e", str(preinst), "install"], env=env,
                          capture_output=True, text=True)
    assert over.returncode == 1 and "tools/install --uninstall" in over.stderr
    upgrade = subprocess.run(["sh", "-e", str(preinst), "upgrade", "0.1.0"], env=env,
                             capture_output=True, text=True)
    assert upgrade.returncode == 0, upgrade.stderr  # its own files, from the old version
